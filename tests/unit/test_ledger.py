"""The ledger of applied events in the real Redis (db 15, a key prefix of its own per test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import worker.processing.ledger.store
from tests.support import REDIS_URL, free_port
from tests.unit.redis_ledgers import unreachable_ledger
from worker.events import IdentifierChanged
from worker.exceptions import LedgerUnavailable, RelationshipBusy, TransientFailure
from worker.processing.ledger import (
    BUSY_FIRST_PAUSE_SECONDS,
    BUSY_LONGEST_PAUSE_SECONDS,
    BusyBackoff,
    Ledger,
    Relationship,
    Verdict,
    order_key,
)

pytestmark = pytest.mark.timeout(30)

TENANT = "portal.example.com"
CUSTOMER = "3f0e6f43-3b0d-4b1c-9a56-0a7a2b1c1d11"
OTHER_CUSTOMER = "0b5e2c1a-7d4f-4e8a-9b3c-2d1e0f9a8b7c"
RESELLER = "9c1d2e3f-4a5b-4c6d-8e7f-901234567890"
T0 = "2024-05-01T12:00:00Z"
T1 = "2024-05-01T12:00:01Z"
T2 = "2024-05-01T12:00:02Z"


def event(
    event_id: str = "evt-1",
    occurred_at: str = T0,
    tenant: str = TENANT,
    customer_id: str = CUSTOMER,
    reseller_id: str | None = RESELLER,
) -> IdentifierChanged:
    return IdentifierChanged.model_validate(
        {
            "eventId": event_id,
            "eventType": "customer.internal-identifier.changed",
            "occurredAt": occurred_at,
            "tenant": tenant,
            "customerId": customer_id,
            "resellerId": reseller_id,
            "internalIdentifier": "CRM-0042",
        }
    )


RELATIONSHIP = Relationship.of(event())


def verdict_in(ledger: Ledger, relationship: Relationship, candidate: IdentifierChanged) -> Verdict:
    """What a worker taking the relationship for ``candidate`` would be told."""
    with ledger.hold(relationship, candidate.event_id) as hold:
        return hold.verdict(candidate)


def record_in(ledger: Ledger, relationship: Relationship, applied: IdentifierChanged) -> None:
    """What a worker leaves behind after applying ``applied``."""
    with ledger.hold(relationship, applied.event_id) as hold:
        hold.applied(applied)


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    return make_ledger()


# --- order_key -------------------------------------------------------------------------------


def test_given_the_same_instant_in_plus_two_hours_and_in_z_then_the_order_keys_are_equal() -> None:
    assert order_key(event(occurred_at="2024-05-01T14:00:00+02:00")) == order_key(
        event(occurred_at="2024-05-01T12:00:00Z")
    )


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("2024-05-01T12:00:00.000000Z", "2024-05-01T12:00:00.000001Z"),
        ("2024-05-01T12:00:00.999999Z", "2024-05-01T12:00:01Z"),
        ("1900-01-01T00:00:00Z", "2100-01-01T00:00:00Z"),
        ("1900-01-01T00:00:00Z", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00Z", "2100-12-31T23:59:59.999999Z"),
        ("1999-12-31T23:59:59.999999Z", "2000-01-01T00:00:00Z"),
        ("1900-01-01T00:00:00+01:00", "1900-01-01T00:00:00Z"),
        ("2024-05-01T13:30:00+02:00", "2024-05-01T12:00:00Z"),
        ("2024-05-01T06:00:00Z", "2024-05-01T02:00:00-05:00"),
        ("2024-05-01T23:00:00-01:00", "2024-05-02T00:30:00Z"),
    ],
)
def test_given_two_instants_then_the_order_keys_sort_as_text_in_time_order(
    earlier: str, later: str
) -> None:
    # Given the same eventId, so that only the time can decide
    first, second = order_key(event(occurred_at=earlier)), order_key(event(occurred_at=later))
    # Then the earlier instant sorts first, whatever the local clock of its offset read
    assert first < second
    assert sorted([second, first]) == [first, second]


def test_given_instants_in_year_one_with_an_offset_east_of_utc_then_they_still_sort_right() -> None:
    # Given two instants that RFC 3339 and the event contract accept, before 0001-01-01T00:00Z
    earlier = order_key(event(occurred_at="0001-01-01T00:00:00+01:00"))
    later = order_key(event(occurred_at="0001-01-01T00:30:00+01:00"))
    # Then they sort in time order too (the key must never go negative)
    assert earlier < later


def test_given_the_same_instant_then_the_event_id_breaks_the_tie() -> None:
    assert order_key(event("evt-a", T0)) < order_key(event("evt-b", T0))
    assert order_key(event("evt-a", T0)) != order_key(event("evt-b", T0))


def test_given_a_larger_event_id_at_an_earlier_instant_then_the_time_still_decides() -> None:
    assert order_key(event("evt-zzz", T0)) < order_key(event("evt-aaa", T1))


# --- verdict and record ----------------------------------------------------------------------


def test_given_an_empty_ledger_then_the_verdict_is_new(ledger: Ledger) -> None:
    assert verdict_in(ledger, RELATIONSHIP, event()) is Verdict.NEW


def test_given_an_event_recorded_then_the_same_event_is_a_duplicate(ledger: Ledger) -> None:
    record_in(ledger, RELATIONSHIP, event("evt-1", T1))

    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", T1)) is Verdict.DUPLICATE
    # the same instant written with another offset is still the same event
    same = event("evt-1", "2024-05-01T14:00:01+02:00")
    assert verdict_in(ledger, RELATIONSHIP, same) is Verdict.DUPLICATE


def test_given_an_event_recorded_then_an_older_one_is_stale(ledger: Ledger) -> None:
    record_in(ledger, RELATIONSHIP, event("evt-2", T1))

    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", T0)) is Verdict.STALE
    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", "2024-05-01T12:00:00.999999Z")) is (
        Verdict.STALE
    )


def test_given_an_event_recorded_then_a_newer_one_is_new(ledger: Ledger) -> None:
    record_in(ledger, RELATIONSHIP, event("evt-2", T1))

    assert verdict_in(ledger, RELATIONSHIP, event("evt-3", T2)) is Verdict.NEW
    assert verdict_in(ledger, RELATIONSHIP, event("evt-0", "2024-05-01T12:00:01.000001Z")) is (
        Verdict.NEW
    )


def test_given_an_event_recorded_then_same_instant_ties_follow_the_event_id(ledger: Ledger) -> None:
    record_in(ledger, RELATIONSHIP, event("evt-m", T1))

    assert verdict_in(ledger, RELATIONSHIP, event("evt-a", T1)) is Verdict.STALE
    assert verdict_in(ledger, RELATIONSHIP, event("evt-z", T1)) is Verdict.NEW


def test_given_a_newer_event_recorded_when_an_older_is_recorded_then_the_newer_stays(
    ledger: Ledger,
) -> None:
    # Given
    record_in(ledger, RELATIONSHIP, event("evt-2", T2))
    # When a late writer records an older event (as after an expired lock)
    record_in(ledger, RELATIONSHIP, event("evt-1", T1))
    # Then the stored event is still the newer one
    assert verdict_in(ledger, RELATIONSHIP, event("evt-2", T2)) is Verdict.DUPLICATE
    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", T1)) is Verdict.STALE


def test_given_an_older_event_recorded_when_a_newer_is_recorded_then_it_moves_forward(
    ledger: Ledger,
) -> None:
    record_in(ledger, RELATIONSHIP, event("evt-1", T1))
    record_in(ledger, RELATIONSHIP, event("evt-2", T2))

    assert verdict_in(ledger, RELATIONSHIP, event("evt-2", T2)) is Verdict.DUPLICATE
    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", T1)) is Verdict.STALE


@pytest.mark.parametrize(("newer", "older"), [("evt-b", "evt-B"), ("evt-a", "evt-B")])
def test_given_same_instant_ids_differing_in_case_then_record_agrees_with_verdict(
    ledger: Ledger, newer: str, older: str
) -> None:
    """Redis compares the stored key in Lua; it must order exactly as the verdict does."""
    assert order_key(event(older, T1)) < order_key(event(newer, T1))
    # Given the newer recorded, When the older is recorded after it
    record_in(ledger, RELATIONSHIP, event(newer, T1))
    record_in(ledger, RELATIONSHIP, event(older, T1))
    # Then the newer is still the one applied
    assert verdict_in(ledger, RELATIONSHIP, event(newer, T1)) is Verdict.DUPLICATE
    assert verdict_in(ledger, RELATIONSHIP, event(older, T1)) is Verdict.STALE


def test_given_a_record_then_it_expires_after_the_ledger_ttl(
    ledger: Ledger, ledger_prefix: str
) -> None:
    record_in(ledger, RELATIONSHIP, event())

    client = redis.Redis.from_url(REDIS_URL)
    try:
        ttls = [client.ttl(key) for key in client.scan_iter(match=f"{ledger_prefix}:*")]
    finally:
        client.close()
    assert len(ttls) == 1
    assert 0 < ttls[0] <= worker.processing.ledger.store.LEDGER_TTL_SECONDS


# --- relationships ---------------------------------------------------------------------------


def test_given_tenants_differing_only_in_case_then_they_are_one_relationship(
    ledger: Ledger,
) -> None:
    upper = event(tenant="Portal.Example.COM")
    lower = event(tenant="portal.example.com")
    assert Relationship.of(upper) == Relationship.of(lower)

    record_in(ledger, Relationship.of(upper), upper)

    assert verdict_in(ledger, Relationship.of(lower), lower) is Verdict.DUPLICATE


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "other.example.com"},
        {"customer_id": OTHER_CUSTOMER},
        {"reseller_id": None},
        {"reseller_id": "11111111-2222-4333-8444-555555555555"},
    ],
    ids=["tenant", "customer", "own-instead-of-reseller", "another-reseller"],
)
def test_given_another_relationship_then_its_ledger_is_separate(
    ledger: Ledger, other: dict[str, Any]
) -> None:
    # Given a newer event applied to the relationship (tenant, customer, reseller)
    applied = event("evt-9", T2)
    record_in(ledger, Relationship.of(applied), applied)
    # When an older event of a relationship differing in one part arrives
    elsewhere = event("evt-1", T0, **other)
    # Then it is new there, and the first relationship is untouched
    assert Relationship.of(elsewhere) != Relationship.of(applied)
    assert verdict_in(ledger, Relationship.of(elsewhere), elsewhere) is Verdict.NEW
    assert verdict_in(ledger, Relationship.of(applied), event("evt-1", T0)) is Verdict.STALE


def test_given_own_relationship_recorded_then_a_reseller_relationship_is_new(
    ledger: Ledger,
) -> None:
    own = event("evt-9", T2, reseller_id=None)
    record_in(ledger, Relationship.of(own), own)

    via_reseller = event("evt-1", T0, reseller_id=RESELLER)
    assert verdict_in(ledger, Relationship.of(via_reseller), via_reseller) is Verdict.NEW


def test_given_two_prefixes_then_their_ledgers_do_not_see_each_other(
    make_ledger: Callable[..., Ledger], ledger_prefix: str
) -> None:
    other_prefix = f"{ledger_prefix}-other"
    mine, theirs = make_ledger(), make_ledger(key_prefix=other_prefix)
    try:
        record_in(mine, RELATIONSHIP, event())

        assert verdict_in(theirs, RELATIONSHIP, event()) is Verdict.NEW
        with mine.hold(RELATIONSHIP):
            quick = make_ledger(lock_wait_seconds=0.1, key_prefix=other_prefix)
            with quick.hold(RELATIONSHIP):
                pass
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{other_prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


# --- the lock --------------------------------------------------------------------------------


def _second_waits_for_first(first: Ledger, second: Ledger) -> None:
    log: list[str] = []
    first_inside = threading.Event()
    let_first_go = threading.Event()
    second_started = threading.Event()

    def hold_first() -> None:
        with first.hold(RELATIONSHIP):
            log.append("first in")
            first_inside.set()
            let_first_go.wait(10)
            log.append("first out")

    def hold_second() -> None:
        first_inside.wait(10)
        second_started.set()
        with second.hold(RELATIONSHIP):
            log.append("second in")
        log.append("second out")

    threads = [threading.Thread(target=hold_first), threading.Thread(target=hold_second)]
    for thread in threads:
        thread.start()
    try:
        # When the second asks while the first is inside
        assert second_started.wait(10)
        time.sleep(0.3)
        # Then the second is still waiting
        assert log == ["first in"]
    finally:
        let_first_go.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    # and enters only after the first left
    assert log == ["first in", "first out", "second in", "second out"]


def test_given_two_threads_of_one_ledger_then_the_second_waits_until_the_first_leaves(
    ledger: Ledger,
) -> None:
    _second_waits_for_first(ledger, ledger)


def test_given_two_ledger_objects_then_the_second_waits_until_the_first_leaves(
    make_ledger: Callable[..., Ledger],
) -> None:
    _second_waits_for_first(make_ledger(), make_ledger())


def test_given_one_relationship_held_then_another_relationship_can_be_held(
    make_ledger: Callable[..., Ledger],
) -> None:
    other = Relationship.of(event(customer_id=OTHER_CUSTOMER))
    with make_ledger().hold(RELATIONSHIP), make_ledger(lock_wait_seconds=0.1).hold(other):
        pass


def test_given_a_hold_not_released_within_the_lock_wait_then_relationship_busy(
    make_ledger: Callable[..., Ledger],
) -> None:
    holder, impatient = make_ledger(), make_ledger(lock_wait_seconds=0.2)

    with holder.hold(RELATIONSHIP):
        started = time.monotonic()
        with pytest.raises(RelationshipBusy) as raised, impatient.hold(RELATIONSHIP):
            pytest.fail("entered a relationship another ledger holds")
        waited = time.monotonic() - started

    assert 0.2 <= waited < 3.0
    assert RELATIONSHIP.name in str(raised.value)
    assert not isinstance(raised.value, TransientFailure)


def test_given_an_exception_inside_the_block_then_the_lock_is_released(
    make_ledger: Callable[..., Ledger],
) -> None:
    holder, impatient = make_ledger(), make_ledger(lock_wait_seconds=0.1)

    with pytest.raises(ValueError, match="boom"), holder.hold(RELATIONSHIP):
        raise ValueError("boom")

    with impatient.hold(RELATIONSHIP):
        pass


def test_given_a_holder_that_died_then_its_lock_expires_and_a_late_release_frees_nothing(
    make_ledger: Callable[..., Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough that the new holder's own lock cannot expire before the checks below run.
    monkeypatch.setattr(worker.processing.ledger.store, "LOCK_TTL_MS", 1500)
    dead, alive, third = make_ledger(), make_ledger(lock_wait_seconds=5.0), make_ledger(0.1)
    # Given a holder that entered and never left (its process died)
    dead_hold = dead.hold(RELATIONSHIP)
    dead_hold.__enter__()
    # When another asks for the relationship
    started = time.monotonic()
    with alive.hold(RELATIONSHIP):
        waited = time.monotonic() - started
        # Then it gets it once the lock expired, not before and not after the lock wait
        assert 1.3 <= waited < 4.5
        # and the dead holder waking up late does not release the new holder's lock
        dead_hold.__exit__(None, None, None)
        with pytest.raises(RelationshipBusy), third.hold(RELATIONSHIP):
            pytest.fail("the late release freed a lock it no longer held")


# --- Redis unreachable -----------------------------------------------------------------------


def test_given_a_failed_round_trip_when_a_ping_is_answered_then_the_ledger_is_reachable_again(
    ledger: Ledger,
) -> None:
    # Given a ledger that last saw Redis fail (as after an outage)
    ledger.reachable = False

    # When the outage probe's ping is answered
    assert ledger.ping() is True

    # Then held calls may go out again
    assert ledger.reachable is True


def test_given_redis_unreachable_when_pinged_then_the_ledger_is_not_reachable() -> None:
    unreachable = unreachable_ledger()

    with pytest.raises(LedgerUnavailable):
        unreachable.ping()

    assert unreachable.reachable is False


OPERATIONS: dict[str, Callable[[Ledger], object]] = {
    "hold": lambda ledger: ledger.hold(RELATIONSHIP).__enter__(),
    "verdict": lambda ledger: verdict_in(ledger, RELATIONSHIP, event()),
    "record": lambda ledger: record_in(ledger, RELATIONSHIP, event()),
    "ping": lambda ledger: ledger.ping(),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_given_redis_unreachable_then_ledger_unavailable_without_url_or_password(
    operation: str,
) -> None:
    port = free_port()
    unreachable = Ledger.from_url(f"redis://ccsync:s3cret-pw@127.0.0.1:{port}/0")

    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as raised:
        OPERATIONS[operation](unreachable)

    assert time.monotonic() - started < 10
    assert isinstance(raised.value, TransientFailure)
    message = str(raised.value)
    assert message.startswith("ledger unavailable")
    for secret in ("redis://", "s3cret-pw", "ccsync:", "127.0.0.1", str(port)):
        assert secret not in message
        assert secret not in raised.value.error
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_given_a_hold_that_lingers_then_the_relationship_stays_locked_that_long(
    make_ledger: Callable[..., Ledger],
) -> None:
    # Given a holder whose call's fate is unknown, lingering 1 s after it leaves
    holder, other = make_ledger(), make_ledger(0.1)
    with holder.hold(RELATIONSHIP) as hold:
        hold.linger(1.0)
    # Then another cannot take the relationship at once
    with pytest.raises(RelationshipBusy), other.hold(RELATIONSHIP):
        pytest.fail("a lingering hold was taken over at once")
    # And can once the linger is over
    time.sleep(1.1)
    with other.hold(RELATIONSHIP):
        pass


def test_given_a_hold_that_does_not_linger_then_it_is_free_at_once(
    make_ledger: Callable[..., Ledger],
) -> None:
    holder, other = make_ledger(), make_ledger(0.1)
    with holder.hold(RELATIONSHIP):
        pass
    with other.hold(RELATIONSHIP):
        pass


def test_given_a_linger_then_only_a_retry_of_the_same_event_may_take_it_and_it_is_kept(
    make_ledger: Callable[..., Ledger],
) -> None:
    # Given event e-1 whose call went unanswered, lingering 2 s
    first, retry, newer = make_ledger(), make_ledger(0.1), make_ledger(0.1)
    with first.hold(RELATIONSHIP, "e-1") as hold:
        hold.linger(2.0)
    # When e-1 is retried, it takes the relationship at once
    with retry.hold(RELATIONSHIP, "e-1"):
        pass
    # Then a newer event still waits: the retry kept the linger of the unanswered call
    with pytest.raises(RelationshipBusy), newer.hold(RELATIONSHIP, "e-2"):
        pytest.fail("a newer event overtook a call that may still land")
    time.sleep(2.1)
    with newer.hold(RELATIONSHIP, "e-2"):
        pass


# --- many at once ----------------------------------------------------------------------------


def test_given_a_held_lock_when_fenced_then_it_lasts_the_lease_and_the_verdict_sees_the_ledger(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    # Given an event holding its relationship, and a newer event recorded since it was taken
    held = ledger.try_acquire_all([(RELATIONSHIP, "evt-1", None)])[0]
    assert held is not None and held.verdict(event("evt-1", T1)) is Verdict.NEW
    held.stored = None
    client = redis.Redis.from_url(REDIS_URL)
    client.set(held.keys[1], order_key(event("evt-2", T2)))

    # When it is fenced right before its call
    ledger.fence(held, lease_seconds=120)

    # Then the lock is kept for the lease, and the verdict sees the newer event
    assert client.pttl(held.keys[0]) > 120_000
    assert held.verdict(event("evt-1", T1)) is Verdict.STALE
    assert other.try_acquire_all([(RELATIONSHIP, "evt-3", None)]) == [None]


def test_given_a_lock_that_expired_and_was_taken_by_another_when_fenced_then_relationship_busy(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    # Given an event whose lock expired while it waited, and another event that took it since
    held = ledger.try_acquire_all([(RELATIONSHIP, "evt-1", None)])[0]
    assert held is not None
    redis.Redis.from_url(REDIS_URL).delete(held.keys[0])
    taken = other.try_acquire_all([(RELATIONSHIP, "evt-2", None)])[0]
    assert taken is not None

    # When the first is fenced before its call, then it must not call
    with pytest.raises(RelationshipBusy, match="lost before the call"):
        ledger.fence(held, lease_seconds=120)

    # And the other keeps the relationship
    assert ledger.try_acquire_all([(RELATIONSHIP, "evt-3", None)]) == [None]


def test_given_a_lock_that_expired_and_was_not_taken_when_fenced_then_it_is_taken_anew(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    # Given an event whose lock expired while it waited, and a newer event recorded meanwhile
    held = ledger.try_acquire_all([(RELATIONSHIP, "evt-1", None)])[0]
    assert held is not None
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(held.keys[0])
    record_in(other, RELATIONSHIP, event("evt-2", T2))

    # When it is fenced, then it holds the relationship again, judged by the ledger as it is now
    ledger.fence(held, lease_seconds=120)
    assert client.pttl(held.keys[0]) > 120_000
    assert other.try_acquire_all([(RELATIONSHIP, "evt-3", None)]) == [None]
    assert held.verdict(event("evt-1", T1)) is Verdict.STALE


def test_given_a_lock_lost_after_the_call_when_left_then_nothing_is_recorded_and_it_says_so(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    # Given a newer event applied, whose lock expired before it was left, and an older event that
    # took the relationship meanwhile (its call will land after the newer one)
    newer = ledger.try_acquire_all([(RELATIONSHIP, "evt-2", None)])[0]
    assert newer is not None
    newer.applied(event("evt-2", T2))
    redis.Redis.from_url(REDIS_URL).delete(newer.keys[0])
    older = other.try_acquire_all([(RELATIONSHIP, "evt-1", None)])[0]
    assert older is not None and older.verdict(event("evt-1", T1)) is Verdict.NEW

    # When the newer one is left, then it is not recorded (its retry must send it again) ...
    assert ledger.leave_all([newer]) == [False]
    # ... and the older one, left in time, is
    older.applied(event("evt-1", T1))
    assert other.leave_all([older]) == [True]
    assert verdict_in(ledger, RELATIONSHIP, event("evt-2", T2)) is Verdict.NEW


def test_given_free_and_held_relationships_then_one_batch_holds_the_free_and_reports_the_held(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, elsewhere = make_ledger(), make_ledger()
    other = Relationship.of(event(customer_id=OTHER_CUSTOMER))
    record_in(ledger, other, event("evt-0", T0, customer_id=OTHER_CUSTOMER))
    busy = elsewhere.acquire(RELATIONSHIP, "elsewhere")

    holds = ledger.try_acquire_all([(RELATIONSHIP, "evt-1", None), (other, "evt-2", None)])

    assert holds[0] is None
    taken = holds[1]
    assert taken is not None
    assert taken.stored == order_key(event("evt-0", T0, customer_id=OTHER_CUSTOMER))
    elsewhere.leave_all([busy])


def test_given_many_holds_when_left_together_then_each_is_recorded_and_released(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    customers = [f"00000000-0000-4000-8000-{n:012d}" for n in range(10)]
    applied = [event(f"evt-{n}", T1, customer_id=customer) for n, customer in enumerate(customers)]
    holds = ledger.try_acquire_all([(Relationship.of(e), e.event_id, None) for e in applied])
    for hold, applied_event in zip(holds, applied, strict=True):
        assert hold is not None
        hold.applied(applied_event)

    ledger.leave_all([hold for hold in holds if hold is not None])

    impatient = make_ledger(lock_wait_seconds=0.05)
    for applied_event in applied:
        assert verdict_in(impatient, Relationship.of(applied_event), applied_event) is (
            Verdict.DUPLICATE
        )


def test_given_redis_forgot_the_scripts_then_taking_and_leaving_still_work(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    redis.Redis.from_url(REDIS_URL).script_flush()

    with ledger.hold(RELATIONSHIP, "evt-1") as hold:
        hold.applied(event("evt-1", T1))
        redis.Redis.from_url(REDIS_URL).script_flush()

    assert verdict_in(ledger, RELATIONSHIP, event("evt-1", T1)) is Verdict.DUPLICATE


def test_given_a_lock_its_event_could_not_leave_when_the_retry_inherits_it_then_it_is_taken_over(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    # Given a lock that an attempt of evt-1 took, fenced for a long lease, and never left
    # (Redis went away before it could)
    orphan = ledger.try_acquire_all([(RELATIONSHIP, "evt-1", None)])[0]
    assert orphan is not None
    ledger.fence(orphan, lease_seconds=180)

    # When another event, or the retry without the token, tries to take it: busy
    assert other.try_acquire_all([(RELATIONSHIP, "evt-2", None)]) == [None]
    assert other.try_acquire_all([(RELATIONSHIP, "evt-1", "another-token")]) == [None]

    # Then the retry that inherited the orphan's token takes the relationship over at once
    retry = other.try_acquire_all([(RELATIONSHIP, "evt-1", orphan.token)])[0]
    assert retry is not None and retry.token != orphan.token
    assert ledger.try_acquire_all([(RELATIONSHIP, "evt-3", None)]) == [None]


def test_given_a_busy_backoff_then_its_pauses_double_up_to_the_longest() -> None:
    backoff = BusyBackoff()
    pauses = [backoff.next_pause() for _ in range(8)]
    assert pauses[:3] == [BUSY_FIRST_PAUSE_SECONDS * 2**i for i in range(3)]
    assert max(pauses) == pauses[-1] == BUSY_LONGEST_PAUSE_SECONDS
    assert pauses == sorted(pauses)
