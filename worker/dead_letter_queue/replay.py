"""Replay: dead letters back through the normal path, as if their producer had sent them again.

Each chosen dead letter is published to ``customer-events`` with its original body, content type
and application headers, so the intake validates it afresh and makes attempt 1; the eventId is
unchanged, hence so is the X-Correlation-Id. It leaves the dead-letter queue only after the
broker confirmed its copy, so an interrupted replay (Ctrl-C, SIGKILL, a lost connection) can at
worst leave an event in both places, and the API call is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kombu import Connection

from worker.amqp.topology import declare_topology
from worker.constants import (
    BROKER_HEADERS,
    EVENT_ROUTING_KEY,
    EVENTS_EXCHANGE,
    HEADER_PREFIX,
    HEADER_REPLAY_COUNT,
    HEADER_REPLAYED_AT,
)
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.dead_letter_queue.edit import edit_body
from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.filters import DeadLetterFilter, Selection, select
from worker.dead_letter_queue.reading import DeadLetterRecord, hold
from worker.processing.dead_letters import Envelope

#: Publishes awaiting their confirms at most: broker speed, and an interruption duplicates little.
WINDOW = 256

#: Seconds a stopped replay waits for the confirms of what it already published.
STOP_SETTLE_TIMEOUT = 2.0


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


def replay(
    connection: Connection,
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    edits: Mapping[str, str | None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_examined: Callable[[int], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: Callable[[], bool] = lambda: False,
) -> ReplayReport:
    """Replays the matching dead letters; those not confirmed stay in the queue.

    ``edits`` (field to value) are applied to the body first; they are refused unless exactly
    one eventId is selected, so a correction can never spread to other events.

    ``stop`` is asked before each publish: once it answers True nothing more is published, the
    confirms of what was are awaited for at most ``STOP_SETTLE_TIMEOUT`` seconds, the confirmed
    dead letters are removed and the report says ``interrupted``; the rest stay in the queue.
    """
    if edits and len(filters.event_ids) != 1:
        raise DeadLetterError("--set edits one event: select it with exactly one --event-id")
    if rate is not None and rate <= 0:
        raise DeadLetterError("--rate must be more than 0 per second")
    report = ReplayReport(dry_run=dry_run)
    started = time.monotonic()
    if not dry_run:
        # The binding customer-events -> ccsync.events must exist, or a confirmed publish
        # could be dropped as unroutable (mandatory catches that too, but later).
        declare_topology(connection)
    window = max(1, min(WINDOW, int(rate))) if rate else WINDOW
    pacer = Pacer(rate)
    confirms: ConfirmWindow[DeadLetterRecord] | None = None
    selection = Selection()
    try:
        with hold(connection) as held:
            if on_total is not None:
                on_total(held.total)
            if not dry_run:
                confirms = ConfirmWindow(connection)

            def remove(settled: tuple[list[DeadLetterRecord], list[DeadLetterRecord]]) -> None:
                confirmed, failed = settled
                for record in confirmed:
                    held.remove(record)
                report.replayed += len(confirmed)
                report.failed += len(failed)

            for record in select(
                held.records, filters, limit=limit, selection=selection, on_examined=on_examined
            ):
                if stop():
                    report.interrupted = True
                    break
                report.event_ids.append(record.event_id)
                envelope = replay_envelope(record, now=now(), edits=edits)
                if edits:
                    report.edited_bodies.append(envelope.body)
                if confirms is None:
                    continue
                pacer.wait()
                if stop():
                    report.interrupted = True
                    break
                confirms.publish(
                    record,
                    envelope,
                    exchange=EVENTS_EXCHANGE,
                    routing_key=EVENT_ROUTING_KEY,
                )
                # Acking as soon as confirms arrive keeps the duplicates of an interruption few.
                remove(confirms.collect())
                if confirms.pending >= window:
                    remove(confirms.settle())
            if report.interrupted:
                held.stop()
            if confirms is not None and report.interrupted:
                # The operator is waiting: what is not confirmed by then stays a dead letter.
                try:
                    remove(confirms.settle(timeout=STOP_SETTLE_TIMEOUT))
                except DeadLetterError:
                    remove(confirms.collect())
            elif confirms is not None:
                remove(confirms.settle())
    finally:
        if confirms is not None:
            confirms.close()
        report.examined, report.matched = selection.examined, selection.matched
        report.seconds = time.monotonic() - started
    return report
