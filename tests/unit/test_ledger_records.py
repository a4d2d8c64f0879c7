"""The ledger's records (order key and value), in the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.unit.test_ledger import T0, T1, T2, event
from worker.events import IdentifierChanged
from worker.processing.ledger import Ledger, Relationship, Verdict, order_key, relationship_named
from worker.processing.ledger.records import (
    AppliedRecord,
    format_record,
    parse_record,
    split_record,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    return make_ledger()


def valued(event_id: str, occurred_at: str, value: str | None, **fields: str) -> IdentifierChanged:
    return event(event_id, occurred_at, **fields).model_copy(update={"internal_identifier": value})


def apply_in(ledger: Ledger, applied: IdentifierChanged) -> Verdict:
    """What a worker does for ``applied``: take, judge, record if new, leave."""
    with ledger.hold(Relationship.of(applied), applied.event_id) as hold:
        verdict = hold.verdict(applied)
        if verdict is Verdict.NEW:
            hold.applied(applied)
        return verdict


# --- the format ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ERP-1", None, "", "  spaced  ", "ü\u0000]["])
def test_given_a_value_then_its_record_gives_back_key_value_and_time(value: str | None) -> None:
    key = order_key(event())
    record = parse_record(format_record(key, value, applied_at=1_700_000_000.1234))
    assert record == AppliedRecord(key, value, 1_700_000_000.123, value_known=True)
    assert record.event_id == "evt-1"
    assert record.occurred_at is not None and record.occurred_at.isoformat().startswith("2024-05")


def test_given_a_record_of_the_order_key_alone_then_the_value_is_unknown() -> None:
    key = order_key(event())
    assert parse_record(key) == AppliedRecord(key)
    assert parse_record(key.encode()).value_known is False


def test_given_an_event_id_holding_nul_then_the_split_is_still_at_the_payload() -> None:
    key = order_key(event("evt\x00[x]"))
    assert split_record(format_record(key, "V", applied_at=1.0))[0] == key
    # A record of the order key alone whose eventId ends in something unbracketed stays whole
    assert split_record(order_key(event("evt\x00x")))[1] is None


@pytest.mark.parametrize(
    ("name", "relationship"),
    [
        ("portal.example|c1|self", Relationship("portal.example", "c1", None)),
        ("a|b.example|c1|r1", Relationship("a|b.example", "c1", "r1")),
        ("{portal.example|c1|r1}", Relationship("portal.example", "c1", "r1")),
        ("nothing", None),
    ],
)
def test_given_a_key_name_then_its_relationship_is_read_back(
    name: str, relationship: Relationship | None
) -> None:
    assert relationship_named(name) == relationship


# --- in Redis --------------------------------------------------------------------------------


def test_given_an_applied_event_then_the_ledger_keeps_its_value(ledger: Ledger) -> None:
    applied = valued("evt-1", T0, "CRM-7")
    assert apply_in(ledger, applied) is Verdict.NEW
    record = ledger.read(Relationship.of(applied))
    assert record is not None
    assert (record.order_key, record.value, record.value_known) == (
        order_key(applied),
        "CRM-7",
        True,
    )
    # And the next event's hold sees it in full
    with ledger.hold(Relationship.of(applied), "evt-2") as hold:
        assert hold.stored == order_key(applied)
        assert hold.stored_record == record


def test_given_a_cleared_value_then_null_is_kept_as_a_known_value(ledger: Ledger) -> None:
    applied = valued("evt-1", T0, None)
    apply_in(ledger, applied)
    record = ledger.read(Relationship.of(applied))
    assert record is not None and record.value_known and record.value is None


def test_given_records_then_only_newer_order_keys_replace_them_whatever_the_values(
    ledger: Ledger,
) -> None:
    # Given the newest event recorded, then an older and a same-instant smaller id tried
    newest = valued("evt-b", T1, "B")
    assert apply_in(ledger, newest) is Verdict.NEW
    assert apply_in(ledger, valued("evt-a", T1, "zzz")) is Verdict.STALE
    assert apply_in(ledger, valued("evt-z", T0, "zzz")) is Verdict.STALE
    assert apply_in(ledger, newest) is Verdict.DUPLICATE
    record = ledger.read(Relationship.of(newest))
    assert record is not None and record.value == "B"
    # And a hold that claims an older event directly is refused by the script, not only Python
    with ledger.hold(Relationship.of(newest), "evt-old") as hold:
        hold.applied(valued("evt-old", T0, "OLD"))
    record = ledger.read(Relationship.of(newest))
    assert record is not None and record.value == "B"
    # And the same order key with another value (a larger record, byte for byte) is no newer
    with ledger.hold(Relationship.of(newest), "evt-b") as hold:
        hold.applied(valued("evt-b", T1, "ZZZ"))
    record = ledger.read(Relationship.of(newest))
    assert record is not None and record.value == "B"
    # And a newer one replaces it
    assert apply_in(ledger, valued("evt-c", T2, "C")) is Verdict.NEW
    record = ledger.read(Relationship.of(newest))
    assert record is not None and record.value == "C"


def test_given_a_record_from_before_values_were_kept_then_it_still_orders_events(
    ledger: Ledger,
) -> None:
    # Given a record of the order key alone, as the version before wrote it
    older = valued("evt-1", T1, "A")
    relationship = Relationship.of(older)
    ledger._redis.set(ledger.applied_key(relationship), order_key(older))
    # Then its value is unknown, an older event is stale, the same one a duplicate
    record = ledger.read(relationship)
    assert record == AppliedRecord(order_key(older))
    assert apply_in(ledger, valued("evt-0", T0, "Z")) is Verdict.STALE
    assert apply_in(ledger, older) is Verdict.DUPLICATE
    # And a newer one is recorded with its value
    assert apply_in(ledger, valued("evt-2", T2, "B")) is Verdict.NEW
    record = ledger.read(relationship)
    assert record is not None and record.value == "B"


def test_given_many_relationships_then_records_gives_each_once(ledger: Ledger) -> None:
    tenants = ["a.example", "b|pipe.example", "star*.example"]
    applied = [
        valued(f"evt-{i}", T0, f"V{i}", tenant=tenants[i % 3], customer_id=str(uuid.uuid4()))
        for i in range(30)
    ]
    for one in applied:
        apply_in(ledger, one)
    found = dict(ledger.records(batch=7))
    assert found == {
        Relationship.of(one): parse_record(
            ledger._redis.get(ledger.applied_key(Relationship.of(one)))  # type: ignore[arg-type]
        )
        for one in applied
    }
    assert {record.value for record in found.values()} == {f"V{i}" for i in range(30)}
