"""The worker's HTTP endpoints on ``CCSYNC_METRICS_PORT``: ``/metrics``, ``/livez``, ``/readyz``.

``/livez`` (liveness) answers from ``Liveness``: the heartbeats of the worker's event loop and of
each stage of its pipeline. A loop or stage that hangs (or a process stopped outright, which
answers nothing) fails it, while a worker that consumes nothing on purpose (paused, outage
protection) still passes. ``/readyz`` (readiness) asks
the worker's own broker connection, ledger, token cache and CloudCockpit. Each answers 200 or 503
with one line per part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

#: Seconds between two beats of the event loop.
LOOP_BEAT_SECONDS: Final = 1.0


@dataclass(frozen=True)
class ProbeAnswer:
    ok: bool
    text: str


class LoopHeartbeat:
    """When a loop (the worker's event loop, a stage's thread) last went round; thread-safe.

    Alive while the last beat is at most ``threshold`` seconds old, and while the worker
    reconnects to the broker (Celery then retries in the loop's thread, which beats nothing).
    Until the first beat, the time of creation counts as one: startup gets ``threshold`` too.
    """

    def __init__(
        self,
        threshold: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str = "event loop",
    ) -> None:
        self.threshold = threshold
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._reconnecting = False

    def beat(self) -> None:
        with self._lock:
            self._last = self._clock()
            self._reconnecting = False

    def reconnecting(self) -> None:
        with self._lock:
            self._reconnecting = True

    def age(self) -> float:
        """Seconds since the last beat."""
        with self._lock:
            return self._clock() - self._last

    def check(self) -> ProbeAnswer:
        with self._lock:
            age = self._clock() - self._last
            reconnecting = self._reconnecting
        if reconnecting:
            return ProbeAnswer(True, f"reconnecting to the broker (loop beat {age:.1f}s ago)")
        if age > self.threshold:
            return ProbeAnswer(
                False, f"{self.name} last beat {age:.1f}s ago (threshold {self.threshold:g}s)"
            )
        return ProbeAnswer(True, f"{self.name} beat {age:.1f}s ago")


class Liveness:
    """What /livez asks: every heartbeat watched, alive only while each of them is."""

    def __init__(self, *heartbeats: LoopHeartbeat) -> None:
        self._lock = threading.Lock()
        self._heartbeats = list(heartbeats)

    def watch(self, heartbeat: LoopHeartbeat) -> None:
        with self._lock:
            self._heartbeats.append(heartbeat)

    def check(self) -> ProbeAnswer:
        with self._lock:
            answers = [heartbeat.check() for heartbeat in self._heartbeats]
        return ProbeAnswer(
            all(answer.ok for answer in answers), "\n".join(answer.text for answer in answers)
        )


def serve_endpoints(
    port: int,
    *,
    live: Callable[[], ProbeAnswer],
    ready: Callable[[], ProbeAnswer],
    host: str = "0.0.0.0",
) -> ThreadingHTTPServer:
    """Serves in a daemon thread until the process ends; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/livez", "/readyz"):
                answer = live() if path == "/livez" else ready()
                body = f"{'ok' if answer.ok else 'FAILED'}\n{answer.text}\n".encode()
                self._answer(200 if answer.ok else 503, body, "text/plain; charset=utf-8")
            else:
                self._answer(404, b"not found: /metrics, /livez or /readyz\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes every few seconds would flood the worker's log.
            pass

    # All interfaces by default: Prometheus and the kubelet reach it from outside the container.
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ccsync-endpoints", daemon=True).start()
    return server
