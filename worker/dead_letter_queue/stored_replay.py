"""Replay and purge from the store: what ``ccsync dlq replay`` and ``purge`` do.

A replay claims each dead letter first (``DeadLetterStore.claim``: one atomic state change, so two
operators replaying one group at once replay each dead letter once), publishes it to
``customer-events`` with confirms, and then marks it replayed (who, when, which job) or, not
confirmed, hands it back to ``waiting``. The row stays as history; the queue is not read.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from kombu import Connection

from worker.amqp.topology import declare_topology
from worker.constants import EVENTS_EXCHANGE
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.purge import PurgeReport
from worker.dead_letter_queue.replay import (
    STOP_SETTLE_TIMEOUT,
    WINDOW,
    Pacer,
    ReplayReport,
    lane_of,
    replay_envelope,
)
from worker.dead_letter_queue.store import DeadLetterStore, StoredLetter


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def _chosen(
    store: DeadLetterStore, filters: DeadLetterFilter, limit: int | None
) -> Iterator[StoredLetter]:
    return itertools.islice(store.matching(filters), limit)


def replay_stored(
    store: DeadLetterStore,
    connection: Connection,
    filters: DeadLetterFilter,
    *,
    who: str,
    job: str | None = None,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    edits: Mapping[str, str | None] | None = None,
    on_examined: Callable[[int], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: Callable[[], bool] = lambda: False,
) -> ReplayReport:
    """Replays the matching waiting dead letters of ``store``; see the module's docstring.

    ``edits`` are refused unless exactly one eventId is selected. ``stop`` is asked before each
    publish; once it answers True, the confirms of what was published are awaited for at most
    ``STOP_SETTLE_TIMEOUT`` seconds and the report says ``interrupted``.
    """
    if edits and len(filters.event_ids) != 1:
        raise DeadLetterError("--set edits one event: select it with exactly one --event-id")
    if rate is not None and rate <= 0:
        raise DeadLetterError("--rate must be more than 0 per second")
    job = job or new_job_id()
    report = ReplayReport(dry_run=dry_run)
    started = time.monotonic()
    chosen = _chosen(store, filters, limit)
    if dry_run:
        report.examined = store.count()  # "N of M": M is every waiting dead letter
        for letter in chosen:
            report.matched += 1
            report.event_ids.append(letter.record.event_id)
            if edits:
                edited = replay_envelope(letter.record, now=now(), edits=edits)
                report.edited_bodies.append(edited.body)
        report.seconds = time.monotonic() - started
        return report
    declare_topology(connection)
    window = max(1, min(WINDOW, int(rate))) if rate else WINDOW
    pacer = Pacer(rate)
    confirms: ConfirmWindow[str] = ConfirmWindow(connection)
    try:
        while not report.interrupted:
            batch = list(itertools.islice(chosen, window))
            if not batch:
                break
            report.examined += len(batch)
            if on_examined is not None:
                on_examined(len(batch))
            claimed = store.claim([letter.id for letter in batch], who=who, job=job)
            unpublished: list[str] = []
            for letter in batch:
                if letter.id not in claimed:
                    continue  # another operator's replay took it
                if stop():
                    report.interrupted = True
                if report.interrupted:
                    unpublished.append(letter.id)
                    continue
                pacer.wait()
                lane = lane_of(report.matched)
                report.matched += 1
                report.event_ids.append(letter.record.event_id)
                envelope = replay_envelope(letter.record, now=now(), edits=edits)
                if edits:
                    report.edited_bodies.append(envelope.body)
                confirms.publish(letter.id, envelope, exchange=EVENTS_EXCHANGE, routing_key=lane)
            try:
                confirmed, failed = confirms.settle(
                    timeout=STOP_SETTLE_TIMEOUT if report.interrupted else None
                )
            except DeadLetterError:  # the operator is waiting: the rest stay dead letters
                confirmed, failed = confirms.collect()
                unpublished += [i for i in claimed if i not in confirmed and i not in unpublished]
            store.settle_replays(
                confirmed=confirmed, failed=failed, released=unpublished, who=who, job=job
            )
            report.replayed += len(confirmed)
            report.failed += len(failed)
    finally:
        confirms.close()
        report.seconds = time.monotonic() - started
    return report


def purge_stored(
    store: DeadLetterStore,
    filters: DeadLetterFilter,
    *,
    who: str,
    limit: int | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Marks the matching waiting dead letters purged: out of the lists, kept as history for the
    retention period (``dlq list --state purged``), then deleted by the keeper."""
    report = PurgeReport(dry_run=dry_run)
    chosen = list(_chosen(store, filters, limit))
    report.matched = len(chosen)
    report.examined = store.count()  # every waiting dead letter, as the queue's pass examined
    report.event_ids = [letter.record.event_id for letter in chosen]
    if not dry_run:
        report.purged = store.purge([letter.id for letter in chosen], who=who)
    return report
