"""The keeper inside the console: dead letters move from the queue into the store while the
console runs, so an operator who runs only the console sees them arrive.

A thread of its own, on a broker connection of its own, reconnecting after a failure (the broker
or the store gone) every ``RECONNECT_SECONDS``; it stops with the console.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Final

from worker.console.broker import connected
from worker.console.config import ConsoleConfig
from worker.dead_letter_queue.keeper import Keeper
from worker.dead_letter_queue.store import DeadLetterStore

log = logging.getLogger(__name__)

#: Seconds between two tries to reach the broker after the keeper lost it.
RECONNECT_SECONDS: Final = 5.0
#: Seconds the console waits for its keeper to finish the batch in hand when it stops.
STOP_SECONDS: Final = 10.0


class ConsoleKeeper:
    def __init__(self, config: ConsoleConfig, store: DeadLetterStore) -> None:
        self._config = config
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccsync-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_SECONDS)

    def _run(self) -> None:
        retention = timedelta(days=self._config.settings.dlq_retention_days)
        while not self._stop.is_set():
            try:
                with connected(self._config) as connection:
                    Keeper(connection, self._store, retention=retention).run(self._stop.is_set)
            except Exception as exc:  # the broker went away: dead letters wait in the queue
                log.warning("the console's keeper stopped (%s); trying again", exc)
                self._stop.wait(RECONNECT_SECONDS)
