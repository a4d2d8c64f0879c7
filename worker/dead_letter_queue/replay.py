"""Replay: dead letters back through the normal path, as if their producer had sent them again.

Each chosen dead letter is published to ``customer-events`` with its original body, content type
and application headers, so the intake validates it afresh and makes attempt 1; the eventId is
unchanged, hence so is the X-Correlation-Id. What a replay publishes, its report and its pace are
here; the replay itself runs from the store (``stored_replay``), and marks a dead letter replayed
only after the broker confirmed its copy, so an interrupted replay (Ctrl-C, SIGKILL, a lost
connection) can at worst publish an event twice, and the API call is idempotent.

A replay's first ``REPLAYED_LIVE`` dead letters go to the live lane, the rest to the backfill
lane (``lane_of``): an operator's replay of a few events is applied at once, and a mass replay
after an outage waits behind live updates instead of delaying them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.constants import (
    BACKFILL_ROUTING_KEY,
    BROKER_HEADERS,
    EVENT_ROUTING_KEY,
    HEADER_PREFIX,
    HEADER_REPLAY_COUNT,
    HEADER_REPLAYED_AT,
)
from worker.dead_letter_queue.edit import edit_body
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.processing.dead_letters import Envelope

#: Publishes awaiting their confirms at most: broker speed, and an interruption duplicates little.
WINDOW = 256

#: Seconds a stopped replay waits for the confirms of what it already published.
STOP_SETTLE_TIMEOUT = 2.0
#: Dead letters of one replay published to the live lane; those after them go to the backfill.
REPLAYED_LIVE = 10


def lane_of(replayed_so_far: int) -> str:
    """The routing key of a replay's next dead letter, after ``replayed_so_far`` of them: the
    live lane's for the first ``REPLAYED_LIVE``, the backfill lane's after them."""
    return EVENT_ROUTING_KEY if replayed_so_far < REPLAYED_LIVE else BACKFILL_ROUTING_KEY


def replay_headers(
    headers: Mapping[str, Any], *, previous_replays: int, now: datetime
) -> dict[str, Any]:
    """The producer's headers, without any outcome of the last life, stamped as a replay."""
    kept = {
        key: value
        for key, value in headers.items()
        if not key.startswith(HEADER_PREFIX) and key not in BROKER_HEADERS
    }
    kept[HEADER_REPLAYED_AT] = now.astimezone(UTC).isoformat()
    kept[HEADER_REPLAY_COUNT] = previous_replays + 1
    return kept


def replay_envelope(
    record: DeadLetterRecord, *, now: datetime, edits: Mapping[str, str | None] | None = None
) -> Envelope:
    """What a replay publishes for one dead letter."""
    headers = record.original_headers
    return Envelope(
        body=edit_body(
            record.body, content_type=record.content_type, headers=headers, edits=edits or {}
        ),
        content_type=record.content_type,
        content_encoding=record.content_encoding,
        headers=replay_headers(headers, previous_replays=record.replay_count, now=now),
    )


@dataclass
class ReplayReport:
    examined: int = 0
    matched: int = 0
    replayed: int = 0
    failed: int = 0
    dry_run: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    event_ids: list[str | None] = field(default_factory=list)
    edited_bodies: list[bytes] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.replayed / self.seconds if self.seconds > 0 else 0.0


class Pacer:
    """Holds publishes to ``rate`` per second on a fixed schedule, so that sleeps do not drift.

    Time lost waiting for confirms is made up, but never more than ``CATCH_UP`` seconds of it:
    the rate protects the API, and a long stall must not turn into a burst.
    """

    CATCH_UP = 0.1

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now - self.CATCH_UP) + self._interval
