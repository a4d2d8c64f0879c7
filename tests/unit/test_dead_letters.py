"""Dead letters (contract section 7): the headers they add and the envelope they keep."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from worker.constants import MAX_ERROR_CHARS
from worker.processing.dead_letters import DeadLetter, Envelope, json_safe_headers

NOW = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
FIRST = "2024-05-01T11:59:00+00:00"
CORRELATION = "38934d26-fbbb-57ff-a7ae-24704752dd8e"


def letter(**changes: object) -> DeadLetter:
    fields: dict[str, object] = {
        "reason": "api-rejected",
        "error": "HTTP 404; NotFound; Customer not found",
        "attempts": 2,
        "event_id": "evt-1",
        "correlation_id": CORRELATION,
        "status": 404,
        "first_attempt_at": FIRST,
    }
    fields.update(changes)
    return DeadLetter(**fields)  # type: ignore[arg-type]


def test_given_a_full_dead_letter_then_every_header_is_there_with_its_type() -> None:
    headers = letter().headers(now=NOW)

    assert headers == {
        "x-ccsync-reason": "api-rejected",
        "x-ccsync-status": 404,
        "x-ccsync-error": "HTTP 404; NotFound; Customer not found",
        "x-ccsync-attempts": 2,
        "x-ccsync-event-id": "evt-1",
        "x-ccsync-correlation-id": CORRELATION,
        "x-ccsync-first-attempt-at": FIRST,
        "x-ccsync-dead-lettered-at": NOW.isoformat(),
    }
    assert type(headers["x-ccsync-status"]) is int
    assert type(headers["x-ccsync-attempts"]) is int


@pytest.mark.parametrize(
    "reason", ["invalid-event", "api-rejected", "retries-exhausted", "delivery-limit"]
)
def test_given_each_reason_then_it_is_carried_as_is(reason: str) -> None:
    assert letter(reason=reason).headers(now=NOW)["x-ccsync-reason"] == reason


def test_given_no_status_then_the_status_header_is_omitted() -> None:
    headers = letter(status=None).headers(now=NOW)

    assert "x-ccsync-status" not in headers
    assert None not in headers.values()


def test_given_an_invalid_event_without_id_then_no_none_valued_header_is_added() -> None:
    headers = letter(
        reason="invalid-event", event_id=None, correlation_id=None, status=None
    ).headers(now=NOW)

    assert None not in headers.values()
    assert headers["x-ccsync-attempts"] == 2


def test_the_timestamps_are_rfc_3339_with_offset() -> None:
    headers = letter().headers(now=datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))

    for name in ("x-ccsync-first-attempt-at", "x-ccsync-dead-lettered-at"):
        parsed = datetime.fromisoformat(headers[name])
        assert parsed.utcoffset() is not None


def test_given_no_now_then_dead_lettered_at_is_the_current_utc_time() -> None:
    before = datetime.now(UTC)

    stamped = datetime.fromisoformat(letter().headers()["x-ccsync-dead-lettered-at"])

    assert before <= stamped <= datetime.now(UTC)


def test_given_no_first_attempt_time_then_it_is_the_dead_letter_time() -> None:
    headers = letter(first_attempt_at=None).headers(now=NOW)

    assert headers["x-ccsync-first-attempt-at"] == NOW.isoformat()


def test_given_a_long_error_then_the_header_is_truncated() -> None:
    headers = letter(error="e" * (MAX_ERROR_CHARS * 5)).headers(now=NOW)

    assert headers["x-ccsync-error"] == "e" * MAX_ERROR_CHARS


# --- the envelope ----------------------------------------------------------------------------


def test_given_an_envelope_then_it_survives_to_wire_json_and_from_wire_unchanged() -> None:
    envelope = Envelope(
        body='{"eventId":"evt-1","internalIdentifier":"Kunde-Ä-東京"}'.encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={"x-producer": "crm", "x-retries": 3, "x-flags": [True, None, 1.5]},
    )

    wire = json.loads(json.dumps(envelope.to_wire()))

    assert Envelope.from_wire(wire) == envelope


def test_given_an_envelope_without_content_type_then_none_is_kept() -> None:
    envelope = Envelope(body=b"{}", content_type=None, content_encoding=None)

    restored = Envelope.from_wire(json.loads(json.dumps(envelope.to_wire())))

    assert restored.content_type is None
    assert restored.content_encoding is None
    assert restored.body == b"{}"
    assert dict(restored.headers) == {}


def test_given_amqp_typed_headers_then_to_wire_is_json_and_from_wire_gives_the_same_types() -> None:
    headers = {
        "cloudEvents:id": b"ce-1",
        "sent": NOW,
        "price": Decimal("12.50"),
        "nested": {"raw": b"\xff", "when": NOW, "n": 1},
        "list": [b"a", NOW, True, "s"],
    }
    envelope = Envelope(
        body=b"{}", content_type="application/json", content_encoding=None, headers=headers
    )

    wire = json.loads(json.dumps(envelope.to_wire()))  # raises if anything is not JSON-safe

    assert wire["headers"]["sent"] == {"$timestamp": NOW.isoformat()}
    assert dict(Envelope.from_wire(wire).headers) == headers


def test_json_safe_headers_converts_bytes_datetime_nested_list_and_decimal() -> None:
    headers = {
        "raw": b"abc",
        "bad-utf8": b"\xff\xfeok",
        "when": NOW,
        "nested": {"inner": b"x", "deeper": {"n": 1}},
        "list": [b"a", NOW, 2, "s"],
        "tuple": (1, b"b"),
        "price": Decimal("12.50"),
        "flag": False,
        "none": None,
        "ratio": 0.25,
    }

    safe = json_safe_headers(headers)

    assert safe == {
        "raw": "abc",
        "bad-utf8": "\ufffd\ufffdok",
        "when": NOW.isoformat(),
        "nested": {"inner": "x", "deeper": {"n": 1}},
        "list": ["a", NOW.isoformat(), 2, "s"],
        "tuple": [1, "b"],
        "price": "12.50",
        "flag": False,
        "none": None,
        "ratio": 0.25,
    }
    assert json.loads(json.dumps(safe)) == safe
