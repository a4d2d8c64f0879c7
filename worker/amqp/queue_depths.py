"""How many messages wait in ccsync's queues: the one reader, for the worker's metrics, the
console, the operators' tools and the tests.

``read_queue`` asks the broker with a passive declare (no queue is created or changed);
``read_queue_depths`` reads every queue of ccsync that way. For the metrics, one background thread
reads them on a connection of its own every ``QUEUE_DEPTH_POLL_SECONDS`` and hands each reading to
a callback (``None`` when the broker could not be asked). Polling rather than asking on each
scrape: the broker sees the same few declares per worker whatever the number of scrapers, and a
slow or unreachable broker never slows ``/metrics`` (or the probes served beside it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from amqp.exceptions import AMQPError, NotFound
from kombu.exceptions import KombuError

from worker.amqp.connection import broker_connection
from worker.constants import (
    BACKFILL_QUEUE,
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
WORK_QUEUES: Final = (EVENTS_QUEUE, BACKFILL_QUEUE, TASKS_QUEUE, DEAD_LETTER_QUEUE)
DELAY_LADDER_QUEUES: Final = tuple(f"{DELAY_QUEUE_PREFIX}{level}" for level in range(DELAY_LEVELS))
#: What closing a channel the broker may have closed already can raise.
CLOSE_FAILURES: Final = (OSError, AMQPError, KombuError)


@dataclass(frozen=True)
class QueueState:
    """What the broker says of a queue: its ready messages and its consumers."""

    messages: int
    consumers: int


def read_queue(connection: Any, queue: str) -> QueueState | None:
    """``queue``'s state by a passive declare (nothing is created or changed), on a channel of its
    own: the broker closes the channel of a passive declare that finds no queue, and then this
    returns None. ``connection`` is a kombu or py-amqp connection, open."""
    channel = connection.channel()
    try:
        _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
    except NotFound:
        return None
    with contextlib.suppress(*CLOSE_FAILURES):
        channel.close()
    return QueueState(int(messages), int(consumers))


@dataclass(frozen=True)
class QueueDepths:
    """Ready messages per queue; None for a queue the broker does not have (yet). The delay
    ladder's levels that hold something, and their sum."""

    events: int | None
    backfill: int | None
    tasks: int | None
    dead_letters: int | None
    delay_levels: dict[int, int]

    @property
    def delayed(self) -> int:
        return sum(self.delay_levels.values())

    @property
    def work(self) -> dict[str, int | None]:
        """The depth of each of ``WORK_QUEUES``, by name."""
        return {
            EVENTS_QUEUE: self.events,
            BACKFILL_QUEUE: self.backfill,
            TASKS_QUEUE: self.tasks,
            DEAD_LETTER_QUEUE: self.dead_letters,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "backfill": self.backfill,
            "tasks": self.tasks,
            "delayed": self.delayed,
            # Only the levels holding something: 22 zeros would say nothing.
            "delayLevels": {str(level): count for level, count in self.delay_levels.items()},
            "deadLetters": self.dead_letters,
        }


def read_queue_depths(connection: Any) -> QueueDepths:
    """One reading of ccsync's queues through ``connection`` (see ``read_queue``)."""

    def ready(queue: str) -> int | None:
        state = read_queue(connection, queue)
        return None if state is None else state.messages

    levels = {
        level: depth for level, queue in enumerate(DELAY_LADDER_QUEUES) if (depth := ready(queue))
    }
    return QueueDepths(
        events=ready(EVENTS_QUEUE),
        backfill=ready(BACKFILL_QUEUE),
        tasks=ready(TASKS_QUEUE),
        dead_letters=ready(DEAD_LETTER_QUEUE),
        delay_levels=levels,
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
                self._record(read_queue_depths(connection))
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
