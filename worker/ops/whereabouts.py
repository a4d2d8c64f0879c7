"""``ccsync events show``: where is an event, or what became of a customer's events? (contract
section 6)

Answered from what ccsync keeps anyway, read without changing any of it:

- the ledger (``Ledger.records``, ``Ledger.locks``): per relationship, the newest event applied
  (its id, ``occurredAt``, value and when it was applied) and its lock, held by an event being
  applied or lingering for one whose call got no definite answer;
- the dead-letter queue, read as ``ccsync dlq list`` reads it (``worker.dead_letter_queue``);
- the broker's queues, counted by passive declares: RabbitMQ shows no message of a queue without
  delivering it, and a delivery handed back counts against a retry's delivery limit, so queued
  retries are counted, never looked into.

An event is, in this order of precedence:

- ``applied``: it is the newest event applied to its relationship (value and time given);
- ``dead-lettered``: a dead letter holds it (reason, status, error given);
- ``waiting``: its relationship lingers for it (its call got no definite answer; its retry is
  queued and newer events of the customer wait behind it), or, when nothing else is known of it,
  an event of the customer holds the relationship now (this one, or one it queues behind);
- ``stale``: given its ``occurredAt``, every relationship of the customer holds a newer event:
  it was skipped, or applied and then overtaken, and its value is not the one that counts;
- ``unknown``: none of the above; it may be queued in the broker, applied and overtaken since,
  or never have reached ccsync.

The ledger keeps only the newest event per relationship, so an event id alone is found in it
only while that event is the newest, or while its relationship lingers for it: looking one up
without its customer scans every record and lock (SCAN, never KEYS, as ``ccsync verify`` does).
With the customer, or once a dead letter names it, only that customer's keys are scanned.

Free of the CLI: tests call ``where_is`` directly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kombu import Connection

from worker.amqp.queue_depths import QueueDepths, read_queue_depths
from worker.dead_letter_queue.filters import DeadLetterFilter, select
from worker.dead_letter_queue.reading import DeadLetterRecord, hold
from worker.processing.ledger import Ledger, LockState, Relationship, order_key_at
from worker.processing.ledger.records import AppliedRecord


class Whereabouts(StrEnum):
    APPLIED = "applied"
    DEAD_LETTERED = "dead-lettered"
    WAITING = "waiting"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RelationshipState:
    """What the ledger holds for one relationship: its newest event applied, and its lock."""

    relationship: Relationship
    applied: AppliedRecord | None
    lock: LockState | None

    def to_json(self) -> dict[str, Any]:
        relationship, applied, lock = self.relationship, self.applied, self.lock
        return {
            "tenant": relationship.tenant,
            "customerId": relationship.customer_id,
            "resellerId": relationship.reseller_id,
            "applied": None if applied is None else _applied_json(applied),
            "lock": None
            if lock is None
            else {
                "lingeringFor": lock.lingering_for,
                "remainingSeconds": round(lock.remaining_seconds, 3),
            },
        }


@dataclass(frozen=True)
class Report:
    """The answer: ``status`` and ``detail`` for an event (``status`` is None when only a
    customer was asked about), and what it was read from."""

    event_id: str | None
    customer_id: str | None
    status: Whereabouts | None
    detail: str
    relationships: list[RelationshipState]
    dead_letters: list[DeadLetterRecord]
    queued: QueueDepths

    def to_json(self) -> dict[str, Any]:
        """The keys of ``ccsync events show --json`` (contract section 6)."""
        return {
            "eventId": self.event_id,
            "customerId": self.customer_id,
            "status": None if self.status is None else self.status.value,
            "detail": self.detail,
            "relationships": [state.to_json() for state in self.relationships],
            "deadLetters": [letter.summary() for letter in self.dead_letters],
            "queued": self.queued.to_json(),
        }


def where_is(
    *,
    ledger: Ledger,
    connection: Connection,
    event_id: str | None = None,
    customer_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> Report:
    """What ccsync knows of the event ``event_id`` (of ``customer_id``, that occurred at
    ``occurred_at``, when given: the customer narrows the ledger's scan, ``occurredAt`` lets a
    stale event be told), or of every event of ``customer_id``. Changes nothing anywhere.

    ``connection`` is an open broker connection. Raises ``ValueError`` without either question,
    ``LedgerUnavailable`` when Redis does not answer, and what reading the broker raises.
    """
    if event_id is None and customer_id is None:
        raise ValueError("name an event id, a customer, or both")
    customer = None if customer_id is None else str(customer_id)
    filters = (
        DeadLetterFilter.build(event_ids=[event_id])
        if event_id is not None
        else DeadLetterFilter.build(customers=[str(customer)])
    )
    with hold(connection) as held:
        letters = list(select(held.records, filters))
    queued = read_queue_depths(connection)
    if customer is None and event_id is not None:
        customer = next((c for c in (letter.customer_id for letter in letters) if c), None)
        customer = customer or _customer_of(ledger, event_id)
    relationships = [] if customer is None else _relationships(ledger, customer.lower())
    if event_id is None:
        return Report(
            None,
            customer,
            None,
            _customer_detail(relationships, letters),
            relationships,
            letters,
            queued,
        )
    status, detail = _verdict(event_id, occurred_at, relationships, letters, queued)
    return Report(event_id, customer, status, detail, relationships, letters, queued)


def _customer_of(ledger: Ledger, event_id: str) -> str | None:
    """The customer of the relationship whose newest event, or whose linger, is ``event_id``:
    a scan of every record, then of every lock."""
    for relationship, record in ledger.records():
        if record.event_id == event_id:
            return relationship.customer_id
    for relationship, lock in ledger.locks():
        if lock.lingering_for == event_id:
            return relationship.customer_id
    return None


def _relationships(ledger: Ledger, customer: str) -> list[RelationshipState]:
    applied = dict(ledger.records(customer_id=customer))
    locks = dict(ledger.locks(customer_id=customer))
    return [
        RelationshipState(relationship, applied.get(relationship), locks.get(relationship))
        for relationship in sorted({*applied, *locks}, key=lambda r: r.name)
    ]


def _verdict(
    event_id: str,
    occurred_at: datetime | None,
    relationships: list[RelationshipState],
    letters: list[DeadLetterRecord],
    queued: QueueDepths,
) -> tuple[Whereabouts, str]:
    for state in relationships:
        if state.applied is not None and state.applied.event_id == event_id:
            return Whereabouts.APPLIED, f"applied {_describe(state.applied)}"
    if letters:
        return Whereabouts.DEAD_LETTERED, "; ".join(_letter_detail(letter) for letter in letters)
    for state in relationships:
        if state.lock is not None and state.lock.lingering_for == event_id:
            return Whereabouts.WAITING, (
                "its call got no definite answer: it is retried, and newer events of the "
                f"customer wait {state.lock.remaining_seconds:.1f}s more behind it"
            )
    newest = [state.applied for state in relationships if state.applied is not None]
    if occurred_at is not None and newest and len(newest) == len(relationships):
        mine = order_key_at(occurred_at, event_id)
        if all(record.order_key > mine for record in newest):
            return Whereabouts.STALE, (
                "a newer event of the customer was applied: "
                + "; ".join(_describe(record) for record in newest)
            )
    for state in relationships:
        if state.lock is not None and state.lock.lingering_for is None:
            return Whereabouts.WAITING, (
                "an event of the customer holds its relationship now, for "
                f"{state.lock.remaining_seconds:.1f}s at most: this one, or one it waits behind"
            )
    return Whereabouts.UNKNOWN, _unknown_detail(occurred_at, newest, queued)


def _unknown_detail(
    occurred_at: datetime | None, newest: list[AppliedRecord], queued: QueueDepths
) -> str:
    retries = (queued.tasks or 0) + queued.delayed
    detail = (
        "neither applied as the newest event, nor dead-lettered, nor waiting on its relationship; "
        f"the broker holds {queued.events or 0} new event(s) and {retries} retry(ies) of all "
        "customers, not looked into"
    )
    if newest and occurred_at is None:
        detail += (
            "; the customer's newest applied: "
            + "; ".join(_describe(record) for record in newest)
            + " (if this event occurred before, it was skipped as stale or overtaken: "
            "--occurred-at compares)"
        )
    return detail


def _customer_detail(
    relationships: list[RelationshipState], letters: list[DeadLetterRecord]
) -> str:
    applied = sum(1 for state in relationships if state.applied is not None)
    waiting = sum(1 for state in relationships if state.lock is not None)
    return (
        f"{applied} relationship(s) with an event applied, {waiting} held now, "
        f"{len(letters)} dead letter(s)"
    )


def _describe(record: AppliedRecord) -> str:
    """An applied record in words: which event, when it occurred, its value and when applied."""
    occurred = record.occurred_at
    text = f"event {record.event_id} (occurredAt {_iso(occurred)})"
    if not record.value_known:
        return f"{text}, value not recorded (applied before the ledger kept values)"
    assert record.applied_at is not None
    applied_at = datetime.fromtimestamp(record.applied_at, UTC)
    return f"{text} with value {_quoted(record.value)} at {_iso(applied_at)}"


def _letter_detail(letter: DeadLetterRecord) -> str:
    status = "" if letter.status is None else f", status {letter.status}"
    moment = letter.dead_lettered_at
    when = "" if moment is None else f" at {_iso(moment)}"
    return f"dead-lettered{when} ({letter.reason}{status}): {letter.error}"


def _applied_json(record: AppliedRecord) -> dict[str, Any]:
    return {
        "eventId": record.event_id,
        "occurredAt": _iso(record.occurred_at),
        "value": record.value,
        "valueKnown": record.value_known,
        "appliedAt": None
        if record.applied_at is None
        else _iso(datetime.fromtimestamp(record.applied_at, UTC)),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _quoted(value: str | None) -> str:
    """A value as JSON: null, an empty string and spaces told apart."""
    return json.dumps(value, ensure_ascii=False)
