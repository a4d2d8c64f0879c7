"""The gate and the settler, the stages around a first attempt's call, over real Redis.

Messages are stand-ins that record how they were settled: the stages only pass them along.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.redis_ledgers import fresh_ledger, unreachable_ledger
from tests.unit.test_apply import ENVELOPE, FakeApi, RecordingForwarder, client_for, status
from worker.events import decode_event
from worker.exceptions import LedgerUnavailable, RelationshipBusy
from worker.processing.applier import BUSY_RETRY_SECONDS, Applier, Outcome
from worker.processing.attempts import Attempt, Call
from worker.processing.backoff import RetryPolicy
from worker.processing.ledger import Ledger, Relationship
from worker.processing.outage import OutageGuard, OutagePolicy
from worker.runtime.gate import Gate
from worker.runtime.settler import InFlightMessages, Settler

WAIT_SECONDS = 5.0


@dataclass
class StandInMessage:
    """Records the one way it was settled, as kombu's ``Message`` would be."""

    name: str
    settled: list[str] = field(default_factory=list)

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.settled.append("ack")

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.settled.append("requeue" if requeue else "reject")


@dataclass
class Handed:
    """What a stage handed on, in order, with a way to wait for it."""

    calls: list[tuple[Call, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, call: Call, message: Any) -> None:
        with self.changed:
            self.calls.append((call, message))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[tuple[Call, Any]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, timeout), self.calls
            return list(self.calls)


def event_attempt(customer: uuid.UUID | None = None, event_id: str | None = None) -> Attempt:
    body = json.loads(ENVELOPE.body)
    body["customerId"] = str(customer or uuid.uuid4())
    body["eventId"] = event_id or f"evt-{uuid.uuid4().hex[:8]}"
    raw = json.dumps(body).encode()
    event = decode_event(raw, "application/json", {})
    return Attempt.first(event, ENVELOPE)


def make_applier(
    ledger: Ledger, api: FakeApi | None = None, guard: OutageGuard | None = None
) -> tuple[Applier, RecordingForwarder]:
    forwarder = RecordingForwarder()
    applier = Applier(
        api=client_for(api or FakeApi(status(204))),
        ledger=ledger,
        forwarder=forwarder,
        policy=RetryPolicy((1.0, 2.0), jitter=0.0),
        guard=guard,
        rng=random.Random(7),
    )
    return applier, forwarder


def running(loop: Callable[[Callable[[], None]], None]) -> None:
    """A stage's loop in a thread of its own, as the pipeline runs it (unsupervised here)."""
    threading.Thread(target=loop, args=(lambda: None,), daemon=True).start()


def gate_over(ledger: Ledger) -> tuple[Gate, Handed, Handed, Handed]:
    held, decided, lost = Handed(), Handed(), Handed()
    gate = Gate(ledger=ledger, on_held=held, on_decided=decided, on_lost=lost, backlog=lambda: 0)
    running(gate.run)
    return gate, held, decided, lost


# --- the gate --------------------------------------------------------------------------------


def test_given_free_relationships_when_events_arrive_then_the_gate_holds_each_and_hands_it_on(
    make_ledger: Callable[..., Ledger],
) -> None:
    # Another worker's view of the same ledger, which gives up quickly
    ledger, other = make_ledger(), make_ledger(lock_wait_seconds=0.05)
    applier, _ = make_applier(ledger)
    gate, held, decided, _ = gate_over(ledger)
    calls = [applier.prepare(event_attempt()) for _ in range(20)]

    for number, call in enumerate(calls):
        gate.put(call, StandInMessage(str(number)))

    handed = held.wait_for(20)
    assert [message.name for _, message in handed] == [str(n) for n in range(20)]
    assert all(call.hold is not None and call.hold.stored is None for call, _ in handed)
    assert decided.calls == []
    # Held means held: another worker's event of the same customer cannot take it now.
    with pytest.raises(RelationshipBusy):
        other.acquire(calls[0].relationship, "someone-else")
    applier.leave_all(calls)


def test_given_a_relationship_held_elsewhere_then_the_gate_waits_and_holds_it_once_free() -> None:
    ledger = fresh_ledger()
    applier, _ = make_applier(ledger)
    customer = uuid.uuid4()
    elsewhere = ledger.acquire(Relationship.of(event_attempt(customer).event), "elsewhere")
    gate, held, decided, _ = gate_over(ledger)

    gate.put(applier.prepare(event_attempt(customer)), StandInMessage("waiting"))
    gate.put(applier.prepare(event_attempt()), StandInMessage("free"))

    assert [message.name for _, message in held.wait_for(1)] == ["free"]
    time.sleep(0.3)
    assert len(held.calls) == 1
    ledger.leave_all([elsewhere])
    assert [message.name for _, message in held.wait_for(2)] == ["free", "waiting"]
    assert decided.calls == []


def test_given_a_relationship_held_past_the_lock_wait_then_the_event_is_deferred_as_busy(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger(lock_wait_seconds=0.3)
    applier, forwarder = make_applier(ledger)
    customer = uuid.uuid4()
    ledger.acquire(Relationship.of(event_attempt(customer).event), "elsewhere")
    gate, held, decided, _ = gate_over(ledger)
    started = time.monotonic()

    gate.put(applier.prepare(event_attempt(customer)), StandInMessage("busy"))

    ((call, _),) = decided.wait_for(1)
    assert time.monotonic() - started >= 0.3
    assert isinstance(call.failure, RelationshipBusy)
    assert held.calls == []
    assert applier.conclude(call) is Outcome.DEFERRED
    ((deferred, delay),) = forwarder.retries
    assert (deferred.number, delay) == (1, BUSY_RETRY_SECONDS)


def test_given_redis_unreachable_then_every_event_is_decided_as_ledger_unavailable() -> None:
    ledger = unreachable_ledger()
    applier, forwarder = make_applier(ledger)
    gate, held, decided, _ = gate_over(ledger)

    for number in range(3):
        gate.put(applier.prepare(event_attempt()), StandInMessage(str(number)))

    calls = decided.wait_for(3)
    assert all(isinstance(call.failure, LedgerUnavailable) for call, _ in calls)
    assert held.calls == []
    assert {applier.conclude(call) for call, _ in calls} == {Outcome.RETRYING}
    assert len(forwarder.retries) == 3


def test_given_outage_protection_on_then_the_gate_decides_without_the_ledger() -> None:
    ledger = unreachable_ledger()
    guard = OutageGuard(
        lambda: False,
        on_open=lambda: None,
        on_trial=lambda: None,
        on_close=lambda: None,
        policy=OutagePolicy(threshold=1),
    )
    guard.record_failure("HTTP 503")
    applier, forwarder = make_applier(ledger, guard=guard)
    gate, held, decided, _ = gate_over(ledger)

    gate.put(applier.prepare(event_attempt()), StandInMessage("outage"))

    ((call, _),) = decided.wait_for(1)
    assert call.outage and call.failure is None and call.hold is None
    assert held.calls == []
    assert applier.conclude(call) is Outcome.DEFERRED
    assert [deferred.number for deferred, _ in forwarder.retries] == [1]
    guard.stop()


# --- the settler -----------------------------------------------------------------------------


def settled_batch(
    applier: Applier, count: int, on_settled: Callable[[], None]
) -> tuple[InFlightMessages, Settler, list[tuple[Call, StandInMessage]]]:
    in_flight = InFlightMessages()
    settler = Settler(applier=applier, in_flight=in_flight, on_settled=on_settled)
    running(settler.run)
    batch = []
    for number in range(count):
        call = applier.prepare(event_attempt())
        call.hold = applier.ledger.acquire(call.relationship, call.attempt.event.event_id)
        applier.send(call)
        in_flight.started()
        batch.append((call, StandInMessage(str(number))))
    return in_flight, settler, batch


def test_given_sent_calls_when_settled_together_then_recorded_concluded_and_acked() -> None:
    ledger = fresh_ledger()
    api = FakeApi(status(204))
    applier, forwarder = make_applier(ledger, api)
    settled_rounds: list[int] = []
    in_flight, settler, batch = settled_batch(applier, 5, lambda: settled_rounds.append(1))

    settler.conclude(batch)
    in_flight.settle(())

    assert settled_rounds == [1]
    assert [message.settled for _, message in batch] == [["ack"]] * 5
    assert in_flight.wait_idle(0)
    assert len(api.requests) == 5
    assert forwarder.retries == []
    assert forwarder.dead_letters == []
    # Recorded and released: the same events again are duplicates, taken without waiting.
    for call, _ in batch:
        again = applier.call(call.attempt)
        applier.leave_all([again])
        assert applier.conclude(again) is Outcome.DUPLICATE


def test_given_redis_gone_before_leaving_then_each_event_is_retried_not_acked_as_applied() -> None:
    ledger = fresh_ledger()
    applier, forwarder = make_applier(ledger)
    in_flight, settler, batch = settled_batch(applier, 3, lambda: None)
    applier.ledger = unreachable_ledger()

    settler.conclude(batch)
    in_flight.settle(())

    assert all(isinstance(call.failure, LedgerUnavailable) for call, _ in batch)
    assert len(forwarder.retries) == 3
    # The retry is in the broker, so the first attempt's message is done with.
    assert [message.settled for _, message in batch] == [["ack"]] * 3


@dataclass
class BrokerFailingFor(RecordingForwarder):
    """Cannot publish the retry of one event."""

    failing_event_id: str = ""

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None:
        if attempt.event.event_id == self.failing_event_id:
            raise ConnectionError("broker gone")
        super().retry_later(attempt, delay_seconds)


def test_given_a_conclusion_that_fails_then_only_that_message_is_requeued() -> None:
    ledger = fresh_ledger()
    applier, _ = make_applier(ledger, FakeApi(status(500)))
    in_flight, settler, batch = settled_batch(applier, 3, lambda: None)
    forwarder = BrokerFailingFor(failing_event_id=batch[1][0].attempt.event.event_id)
    applier.forwarder = forwarder

    for call, message in batch:
        settler.put(call, message)
    assert in_flight.wait_idle(WAIT_SECONDS)
    in_flight.settle(())

    assert [message.settled for _, message in batch] == [["ack"], ["requeue"], ["ack"]]
    assert len(forwarder.retries) == 2


def test_given_redis_lost_after_the_relationship_was_taken_then_the_call_is_not_made() -> None:
    api = FakeApi(status(204))
    held_by, _ = make_applier(fresh_ledger())
    call = held_by.prepare(event_attempt())
    call.hold = held_by.ledger.acquire(call.relationship, call.attempt.event.event_id)
    # The same call meets a ledger whose last round trip failed (Redis went away meanwhile).
    ledger = unreachable_ledger()
    with pytest.raises(LedgerUnavailable):
        ledger.try_acquire_all([(call.relationship, "another-event", None)])
    applier, forwarder = make_applier(ledger, api)

    applier.send(call)

    assert api.requests == []
    assert isinstance(call.failure, LedgerUnavailable)
    assert applier.conclude(call) is Outcome.RETRYING
    assert [retry.number for retry, _ in forwarder.retries] == [2]
