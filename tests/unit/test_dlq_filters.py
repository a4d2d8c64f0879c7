"""Which dead letters a filter selects: every filter alone, together, and the limit."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.dead_letter_queue.filters import DeadLetterFilter, Selection, parse_timestamp, select
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.events import correlation_id

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(
    *,
    reason: str = "retries-exhausted",
    status: int | None = 503,
    tenant: str | None = "portal.example.com",
    customer: str | None = None,
    event_id: str | None = None,
    at: datetime | None = T0,
    correlation: str | None = None,
    **extra_headers: Any,
) -> DeadLetterRecord:
    event_id = event_id or str(uuid.uuid4())
    body: dict[str, Any] = {
        "eventId": event_id,
        "eventType": "customer.internal-identifier.changed",
        "customerId": customer or str(uuid.uuid4()),
        "internalIdentifier": "X-1",
    }
    if tenant is not None:
        body["tenant"] = tenant
    headers: dict[str, Any] = {"x-ccsync-reason": reason, "x-ccsync-event-id": event_id}
    if status is not None:
        headers["x-ccsync-status"] = status
    if at is not None:
        headers["x-ccsync-dead-lettered-at"] = at.isoformat()
    if correlation is not None:
        headers["x-ccsync-correlation-id"] = correlation
    headers.update(extra_headers)
    return DeadLetterRecord(1, json.dumps(body).encode(), "application/json", headers)


def test_no_filter_selects_everything() -> None:
    # Given no filter at all
    filters = DeadLetterFilter.build()
    # Then it says so, and every dead letter matches, even one without any ccsync header
    assert filters.selects_everything
    assert filters.describe() == "no filter: every dead letter"
    assert filters.matches(record())
    assert filters.matches(DeadLetterRecord(1, b"\xff", None, {}))


def test_reason_and_status_are_alternatives_within_and_conjunctive_across() -> None:
    # Given a filter on two reasons and one status
    filters = DeadLetterFilter.build(reasons=["retries-exhausted", "api-rejected"], statuses=[404])
    # Then a dead letter must have one of the reasons and that status
    assert filters.matches(record(reason="api-rejected", status=404))
    assert filters.matches(record(reason="retries-exhausted", status=404))
    assert not filters.matches(record(reason="retries-exhausted", status=503))
    assert not filters.matches(record(reason="invalid-event", status=404))
    assert not filters.matches(record(reason="api-rejected", status=None))


def test_customer_matches_without_case_and_event_id_exactly() -> None:
    customer = str(uuid.uuid4())
    letter = record(customer=customer, event_id="evt-42")
    # Then the customer filter ignores case; the eventId filter is exact
    assert DeadLetterFilter.build(customers=[customer.upper()]).matches(letter)
    assert not DeadLetterFilter.build(customers=[str(uuid.uuid4())]).matches(letter)
    assert DeadLetterFilter.build(event_ids=["evt-42", "other"]).matches(letter)
    assert not DeadLetterFilter.build(event_ids=["EVT-42"]).matches(letter)


def test_tenant_from_the_body_without_case() -> None:
    letter = record(tenant="Portal.Example.com")
    assert DeadLetterFilter.build(tenants=["portal.example.COM"]).matches(letter)
    assert not DeadLetterFilter.build(tenants=["other.example.com"]).matches(letter)


def test_tenant_of_an_event_that_used_the_default_tenant_is_found_by_its_correlation_id() -> None:
    # Given an event without tenant, sent with CLOUDCOCKPIT_TENANT=tests.example
    event_id = "evt-default-tenant"
    letter = record(
        tenant=None, event_id=event_id, correlation=str(correlation_id("tests.example", event_id))
    )
    # Then --tenant tests.example selects it and another tenant does not
    assert DeadLetterFilter.build(tenants=["tests.example"]).matches(letter)
    assert not DeadLetterFilter.build(tenants=["other.example"]).matches(letter)
    # And without a recorded correlation id (an invalid event) nothing can tell: no match
    assert not DeadLetterFilter.build(tenants=["tests.example"]).matches(
        record(tenant=None, event_id=event_id)
    )


def test_since_is_inclusive_and_until_exclusive() -> None:
    filters = DeadLetterFilter.build(since=T0, until=T0 + timedelta(hours=1))
    assert filters.matches(record(at=T0))
    assert filters.matches(record(at=T0 + timedelta(minutes=59)))
    assert not filters.matches(record(at=T0 + timedelta(hours=1)))
    assert not filters.matches(record(at=T0 - timedelta(seconds=1)))
    # A dead letter without a date cannot be placed in time: a time filter leaves it out
    assert not filters.matches(record(at=None))


def test_timestamps_without_offset_are_utc_and_bad_ones_are_explained() -> None:
    assert parse_timestamp("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T12:00:00Z") == T0
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == T0
    with pytest.raises(ValueError, match="not an ISO timestamp"):
        parse_timestamp("yesterday")
    with pytest.raises(ValueError):
        DeadLetterFilter.build(until="01/05/2024")


def test_describe_speaks_the_command_line() -> None:
    filters = DeadLetterFilter.build(reasons=["api-rejected"], statuses=[404], event_ids=["e1"])
    assert filters.describe() == "--reason api-rejected --status 404 --event-id e1"


def test_select_stops_after_limit_matches_and_counts_what_it_examined() -> None:
    # Given 10 dead letters, every other one api-rejected
    letters = [record(reason="api-rejected" if i % 2 else "invalid-event") for i in range(10)]
    fetched: list[int] = []

    def source() -> Any:
        for index, letter in enumerate(letters):
            fetched.append(index)
            yield letter

    # When selecting 3 api-rejected ones
    counts = Selection()
    chosen = list(
        select(
            source(), DeadLetterFilter.build(reasons=["api-rejected"]), limit=3, selection=counts
        )
    )
    # Then exactly 3 came back, and fetching stopped at the third match
    assert chosen == [letters[1], letters[3], letters[5]]
    assert fetched == list(range(6))
    assert (counts.examined, counts.matched) == (6, 3)
    assert list(select(letters, DeadLetterFilter(), limit=0)) == []
