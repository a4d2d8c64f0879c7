"""The worker's side of ``ccsync pause``: it follows its deployment's pause record.

A thread reads the record (``worker.processing.pause``) every ``POLL_SECONDS`` and holds or
releases consumption through the consumer switch; the first read happens before the worker
consumes anything. While Redis does not answer, the worker keeps the state it last read.
"""

from __future__ import annotations

import logging
import threading

from worker.constants import EVENTS_QUEUE, TASKS_QUEUE
from worker.exceptions import LedgerUnavailable
from worker.observability import metrics
from worker.processing.pause import POLL_SECONDS, Pause, PauseStore
from worker.runtime.consumer_switch import OPERATOR, ConsumerSwitch

log = logging.getLogger(__name__)


class PauseWatcher:
    """Holds ``switch`` (as ``OPERATOR``) while the deployment's pause record exists."""

    def __init__(
        self, store: PauseStore, *, switch: ConsumerSwitch, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self._store = store
        self._switch = switch
        self._poll_seconds = poll_seconds
        self._pause: Pause | None = None
        self._unreachable = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.set_paused(None)

    @property
    def pause(self) -> Pause | None:
        """The pause this worker obeys, if any."""
        return self._pause

    def start(self) -> None:
        """Reads the record once in this thread (so a paused deployment's worker starts paused),
        then follows it in a thread of its own."""
        self.check()
        self._thread = threading.Thread(target=self._run, name="ccsync-pause-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._poll_seconds):
            try:
                self.check()
            except Exception:
                log.exception("pause watch: the record could not be followed")

    def check(self) -> None:
        """Reads the record and obeys it."""
        try:
            pause = self._store.read()
        except LedgerUnavailable as exc:
            if not self._unreachable:
                self._unreachable = True
                state = self._pause.describe() if self._pause else "not paused"
                log.warning("pause record unreadable (%s); staying as last read: %s", exc, state)
            return
        self._unreachable = False
        if pause == self._pause:
            return
        self._pause = pause
        if pause is None:
            metrics.set_paused(None)
        else:
            metrics.set_paused(pause.reason, pause.by)
        if pause is not None:
            log.warning(
                "consumption %s; taking no more events from %s and %s (events in hand finish)",
                pause.describe(),
                EVENTS_QUEUE,
                TASKS_QUEUE,
                extra={"pausedBy": pause.by, "pausedAt": pause.at, "pauseReason": pause.reason},
            )
            self._switch.pause(OPERATOR)
        else:
            log.warning(
                "pause lifted (ccsync resume); consuming %s and %s", EVENTS_QUEUE, TASKS_QUEUE
            )
            self._switch.resume(OPERATOR)
