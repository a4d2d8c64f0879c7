"""Queue depths for the console's live header: the work in front of ccsync and what failed."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from worker.constants import (
    DEAD_LETTER_QUEUE,
    DELAY_LEVELS,
    DELAY_QUEUE_PREFIX,
    EVENTS_QUEUE,
    TASKS_QUEUE,
)


@dataclass(frozen=True)
class QueueDepths:
    """Ready messages per queue; None for a queue the broker does not have (yet)."""

    events: int | None
    tasks: int | None
    delayed: int
    delay_levels: dict[int, int]
    dead_letters: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "tasks": self.tasks,
            "delayed": self.delayed,
            # Only the levels holding something: 22 zeros would say nothing.
            "delayLevels": {str(level): count for level, count in self.delay_levels.items()},
            "deadLetters": self.dead_letters,
        }


def _depth(connection: Connection, queue: str) -> int | None:
    """Ready messages in ``queue``, declared passively so that reading never creates a queue."""
    channel = connection.channel()
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        return int(count)
    except connection.channel_errors:
        # NOT_FOUND closes the channel: the queue does not exist.
        return None
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def queue_depths(connection: Connection) -> QueueDepths:
    levels = {
        level: depth
        for level in range(DELAY_LEVELS)
        if (depth := _depth(connection, f"{DELAY_QUEUE_PREFIX}{level}"))
    }
    return QueueDepths(
        events=_depth(connection, EVENTS_QUEUE),
        tasks=_depth(connection, TASKS_QUEUE),
        delayed=sum(levels.values()),
        delay_levels=levels,
        dead_letters=_depth(connection, DEAD_LETTER_QUEUE),
    )
