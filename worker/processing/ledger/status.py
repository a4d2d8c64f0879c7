"""How the ledger's Redis has been answering: ok, slow or unavailable, and since when.

A Redis that answers, but late, stalls the worker as surely as one that does not: a fence that
comes back later than its margin vouches for nothing, so every call is refused and its event
deferred. ``Vitals`` watches every round trip and says so, in a log line when the state changes,
in the gauges ``ccsync_ledger_slow`` and ``ccsync_ledger_unavailable``, and in the
``LedgerStatus`` a liveness probe can read (``LedgerStatus.healthy``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from worker.observability import metrics

log = logging.getLogger("worker.processing.ledger")

#: A round trip to the ledger's Redis slower than this is slow: half the fence's margin
#: (``FENCE_MARGIN_SECONDS``), past which calls begin to be refused as unsafe.
SLOW_ROUND_TRIP_SECONDS = 1.0
#: Seconds without a slow round trip that end a slow spell: a few quick answers among slow ones
#: (a ping between two pauses) do not make the ledger well again.
SLOW_SPELL_SECONDS = 10.0
#: Seconds the ledger may stay slow or unavailable before its status says unhealthy: by then
#: every event that came meanwhile has been deferred at least once, and nothing has been applied.
UNHEALTHY_AFTER_SECONDS = 120.0


class LedgerState(StrEnum):
    OK = "ok"
    SLOW = "slow"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class LedgerStatus:
    """The ledger's state, and since when (None while ``ok``)."""

    state: LedgerState
    since: datetime | None = None

    def healthy(self, *, now: float | None = None) -> bool:
        """False once the ledger has been slow or unavailable for ``UNHEALTHY_AFTER_SECONDS``
        (``now``: seconds since the epoch, the current time if None)."""
        if self.since is None:
            return True
        moment = time.time() if now is None else now
        return moment - self.since.timestamp() < UNHEALTHY_AFTER_SECONDS


class Vitals:
    """The state of the ledger's Redis, from its round trips, in any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = LedgerStatus(LedgerState.OK)
        self._last_slow = 0.0

    @property
    def status(self) -> LedgerStatus:
        return self._status

    def answered(self, seconds: float) -> None:
        """A round trip that took ``seconds`` was answered."""
        if seconds <= SLOW_ROUND_TRIP_SECONDS and self._status.state is LedgerState.OK:
            return
        with self._lock:
            now = time.monotonic()
            if seconds > SLOW_ROUND_TRIP_SECONDS:
                self._last_slow = now
                if self._status.state is not LedgerState.SLOW:
                    self._change(LedgerState.SLOW, time.time() - seconds)
                    log.warning(
                        "the ledger is slow: a Redis round trip took %.1fs (slow above %.1fs); "
                        "events are deferred until Redis answers in time",
                        seconds,
                        SLOW_ROUND_TRIP_SECONDS,
                    )
            elif self._status.state is LedgerState.UNAVAILABLE or (
                now - self._last_slow > SLOW_SPELL_SECONDS
            ):
                log.warning("the ledger answers in time again (it was %s)", self._status.state)
                self._change(LedgerState.OK, None)

    def failed(self) -> None:
        """A round trip got no answer."""
        with self._lock:
            if self._status.state is not LedgerState.UNAVAILABLE:
                self._change(LedgerState.UNAVAILABLE, time.time())
                log.warning("the ledger is unavailable: Redis did not answer")

    def _change(self, state: LedgerState, since: float | None) -> None:
        self._status = LedgerStatus(
            state, None if since is None else datetime.fromtimestamp(since, UTC)
        )
        metrics.LEDGER_SLOW.set(1 if state is LedgerState.SLOW else 0)
        metrics.LEDGER_UNAVAILABLE.set(1 if state is LedgerState.UNAVAILABLE else 0)
