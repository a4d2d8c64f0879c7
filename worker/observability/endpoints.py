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
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

#: Seconds between two beats of the event loop.
LOOP_BEAT_SECONDS: Final = 1.0
#: Connections served at once (a thread each): Prometheus and the kubelet need a few; a
#: connection beyond them is closed at once, so no client can make the worker start threads.
MAX_ENDPOINT_THREADS: Final = 8
#: Seconds a connection may stay silent (while sending its request, or between two on one
#: connection) before it is closed and its thread freed.
ENDPOINT_IDLE_SECONDS: Final = 10.0


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


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, ``max_threads`` at most: past them, a connection is closed
    unanswered. Its threads are daemons: they never hold the process's exit."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, *, max_threads: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_endpoints(
    port: int,
    *,
    live: Callable[[], ProbeAnswer] | None = None,
    ready: Callable[[], ProbeAnswer] | None = None,
    host: str = "127.0.0.1",
    max_threads: int = MAX_ENDPOINT_THREADS,
    idle_seconds: float = ENDPOINT_IDLE_SECONDS,
    registry: CollectorRegistry = REGISTRY,
) -> ThreadingHTTPServer:
    """Serves in a daemon thread until the process ends; returns the server. ``/livez`` and
    ``/readyz`` are served when their probe is given (a worker's), ``/metrics`` always, from
    ``registry`` (this process's metrics unless told otherwise).

    On loopback unless ``host`` says otherwise (``CCSYNC_METRICS_HOST``): what the probes and
    metrics tell is for this host's Prometheus and kubelet, or for those a deployment lets in.
    """

    probes = {path: probe for path, probe in (("/livez", live), ("/readyz", ready)) if probe}
    not_found = f"not found: {', '.join(['/metrics', *probes])}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_seconds  # a silent client frees its thread

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif (probe := probes.get(path)) is not None:
                answer = probe()
                body = f"{'ok' if answer.ok else 'FAILED'}\n{answer.text}\n".encode()
                self._answer(200 if answer.ok else 503, body, "text/plain; charset=utf-8")
            else:
                self._answer(404, not_found, "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes every few seconds would flood the worker's log.
            pass

    server = BoundedHTTPServer((host, port), Handler, max_threads=max_threads)
    threading.Thread(target=server.serve_forever, name="ccsync-endpoints", daemon=True).start()
    return server
