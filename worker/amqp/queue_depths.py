"""How many messages wait in ccsync's queues, for the worker's metrics.

One background thread asks the broker with passive declares (no queue is created or changed), on
a connection of its own, every ``QUEUE_DEPTH_POLL_SECONDS``, and hands each reading to a callback
(``None`` when the broker could not be asked). Polling rather than asking on each scrape: the
broker sees the same few declares per worker whatever the number of scrapers, and a slow or
unreachable broker never slows ``/metrics`` (or the probes served beside it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from worker.amqp.connection import broker_connection
from worker.constants import (
    DEAD_LETTER_QUEUE,
    DELAY_LEVELS,
    DELAY_QUEUE_PREFIX,
    EVENTS_QUEUE,
    TASKS_QUEUE,
)
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between two readings: a scrape interval; alerts on queue depths wait minutes anyway.
QUEUE_DEPTH_POLL_SECONDS: Final = 15.0
#: Seconds to connect to the broker for a reading.
QUEUE_DEPTH_CONNECT_TIMEOUT: Final = 5.0
WORK_QUEUES: Final = (EVENTS_QUEUE, TASKS_QUEUE, DEAD_LETTER_QUEUE)
DELAY_LADDER_QUEUES: Final = tuple(f"{DELAY_QUEUE_PREFIX}{level}" for level in range(DELAY_LEVELS))


@dataclass(frozen=True)
class QueueDepths:
    """Messages ready in each work queue, and in the delay ladder's queues together."""

    work: dict[str, int]
    delay_ladder: int


def read_queue_depths(channel: Any) -> QueueDepths:
    """One reading through ``channel`` (py-amqp). A queue that does not exist raises (the
    channel is then closed by the broker)."""

    def ready(name: str) -> int:
        return int(channel.queue_declare(queue=name, passive=True).message_count)

    return QueueDepths(
        work={name: ready(name) for name in WORK_QUEUES},
        delay_ladder=sum(ready(name) for name in DELAY_LADDER_QUEUES),
    )


class QueueDepthPoller:
    """Reads the depths every ``interval`` seconds in a daemon thread until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        record: Callable[[QueueDepths | None], None],
        *,
        interval: float = QUEUE_DEPTH_POLL_SECONDS,
    ) -> None:
        self._settings = settings
        self._record = record
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccsync-queue-depths", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        connection = None
        while not self._stopped.is_set():
            try:
                if connection is None:
                    connection = broker_connection(
                        self._settings, connect_timeout=QUEUE_DEPTH_CONNECT_TIMEOUT
                    )
                    connection.ensure_connection(max_retries=1)
                channel = connection.default_channel
                self._record(read_queue_depths(channel))
            except Exception as exc:
                # The next reading starts afresh; until then the depths are unknown, not zero.
                log.debug("queue depths not read: %s: %s", type(exc).__name__, exc)
                self._record(None)
                if connection is not None:
                    connection.release()
                connection = None
            self._stopped.wait(self._interval)
        if connection is not None:
            connection.release()
