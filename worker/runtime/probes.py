"""Liveness and readiness from inside the worker (served by ``worker.observability.endpoints``).

``LoopBeat`` is a consumer step: a timer of the worker's event loop beats the app's
``LoopHeartbeat``, so the beat stops exactly when the loop stops running. ``readiness`` checks
what ``ccsync health`` checks, but through the worker's own connection, ledger and token cache:
a probe every few seconds fetches no new token and opens no new broker connection.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol

import httpx
from celery import bootsteps

from worker.amqp.queue_depths import WORK_QUEUES, QueueDepthPoller, QueueDepths
from worker.cloudcockpit.client import make_http_client
from worker.observability import metrics
from worker.observability.endpoints import (
    LOOP_BEAT_SECONDS,
    Liveness,
    LoopHeartbeat,
    ProbeAnswer,
    serve_endpoints,
)
from worker.observability.redaction import Redaction
from worker.ops.health import CheckResult, check_api
from worker.settings import Settings


class CcsyncCelery(Protocol):
    """What the probes read of the worker's app (``worker.runtime.app.CcsyncCelery``)."""

    ccsync_settings: Settings
    loop_heartbeat: LoopHeartbeat
    liveness: Liveness
    broker_consumer: Any

    @property
    def runtime(self) -> Any:
        """The worker's ledger and token source, made once."""


#: Seconds the API part of a readiness check may take.
READINESS_API_TIMEOUT: Final = 5.0


class LoopBeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Beats ``parent.app.loop_heartbeat`` from the event loop; marks reconnections."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._ticking_hub: Any = None

    def start(self, c: Any) -> None:
        c.app.broker_consumer = c
        heartbeat = c.app.loop_heartbeat
        heartbeat.beat()
        if c.hub is not None and c.hub is not self._ticking_hub:
            self._ticking_hub = c.hub
            c.hub.call_repeatedly(LOOP_BEAT_SECONDS, heartbeat.beat)

    def stop(self, c: Any) -> None:
        # Celery stops the consumer's steps before it reconnects (in the loop's thread).
        c.app.loop_heartbeat.reconnecting()


def serve_worker_endpoints(app: CcsyncCelery, port: int) -> None:
    """/metrics, /livez and /readyz on ``port``."""
    http = make_http_client(app.ccsync_settings)
    http.timeout = httpx.Timeout(READINESS_API_TIMEOUT)
    serve_endpoints(
        port,
        host=app.ccsync_settings.metrics_host,
        live=app.liveness.check,
        ready=lambda: readiness(app, http),
    )


def poll_queue_depths(app: CcsyncCelery) -> None:
    """The queue depth gauges of /metrics, read from now on (once the topology exists)."""
    QueueDepthPoller(app.ccsync_settings, record_queue_depths).start()


def record_queue_depths(depths: QueueDepths | None) -> None:
    """Sets the depth gauges; unknown (NaN) when the broker could not be asked, or for a queue
    it does not have."""
    unknown = float("nan")
    work = {} if depths is None else depths.work
    for queue in WORK_QUEUES:
        depth = work.get(queue)
        metrics.QUEUE_MESSAGES.labels(queue).set(unknown if depth is None else depth)
    metrics.DELAY_LADDER_MESSAGES.set(unknown if depths is None else depths.delayed)


def readiness(app: CcsyncCelery, http: httpx.Client) -> ProbeAnswer:
    """Broker (the worker's consumer is connected), Redis (the ledger answers PING), token (the
    worker's cache holds one or gets one), API (CloudCockpit answers HTTP at all)."""
    checks = [
        lambda: _broker(app),
        lambda: _redis(app),
        lambda: _token(app),
        lambda: check_api(app.ccsync_settings, http),
    ]
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="ccsync-ready") as pool:
        results = list(pool.map(_guarded, ["broker", "redis", "token", "api"], checks))
    redact = Redaction.from_settings(app.ccsync_settings)
    text = "\n".join(redact.text(result.line()) for result in results)
    return ProbeAnswer(all(result.ok for result in results), text)


def _broker(app: CcsyncCelery) -> CheckResult:
    consumer = getattr(app, "broker_consumer", None)
    connection = getattr(consumer, "connection", None)
    if connection is None or not connection.connected:
        return CheckResult("broker", False, "the worker is not connected")
    return CheckResult("broker", True)


def _redis(app: CcsyncCelery) -> CheckResult:
    ledger = app.runtime.ledger
    if not ledger.ping():
        return CheckResult("redis", False, "the ledger does not answer PING")
    status = ledger.status
    if not status.healthy():
        # Answers a PING, yet its round trips have been too slow (or failing) for minutes.
        return CheckResult(
            "redis", False, f"the ledger has been {status.state} since {status.since}"
        )
    return CheckResult("redis", True)


def _token(app: CcsyncCelery) -> CheckResult:
    app.runtime.tokens.token()
    return CheckResult("token", True, "cached")


def _guarded(part: str, check: Any) -> CheckResult:
    # A failing part is a line naming it, never a traceback in the probe's answer.
    try:
        result: CheckResult = check()
    except Exception as exc:
        return CheckResult(part, False, f"{type(exc).__name__}: {exc}"[:200])
    return result
