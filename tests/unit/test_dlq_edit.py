"""Edit and replay: ``--set`` parsing and the body edit in each of the three encodings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from worker.amqp.event_publishing import Encoding, encode, new_event
from worker.dead_letter_queue.edit import edit_body, parse_assignments
from worker.dead_letter_queue.errors import DeadLetterError
from worker.events import decode_event

CUSTOMER = "0b6f4c1e-4b0e-4a53-9d43-2f4f3c1d2e10"
RESELLER = "6d3c8d0e-1a52-4e64-a1b1-6b7d0cfa9f11"


def test_assignments_parse_with_null_as_json_null() -> None:
    edits = parse_assignments(
        ["internalIdentifier=ACME=42", "resellerId=null", "tenant=portal.example.com"]
    )
    assert edits == {
        "internalIdentifier": "ACME=42",  # only the first '=' separates
        "resellerId": None,
        "tenant": "portal.example.com",
    }
    assert parse_assignments(["internalIdentifier="]) == {"internalIdentifier": ""}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("internalIdentifier", "expected FIELD=VALUE"),
        ("customerId=0b6f4c1e-4b0e-4a53-9d43-2f4f3c1d2e10", "only internalIdentifier"),
        ("eventId=x", "only internalIdentifier"),
    ],
)
def test_assignments_refuse_other_fields_and_bad_syntax(text: str, message: str) -> None:
    with pytest.raises(DeadLetterError, match=message):
        parse_assignments([text])


@pytest.mark.parametrize("encoding", list(Encoding))
def test_each_encoding_is_edited_where_it_keeps_the_field(encoding: Encoding) -> None:
    # Given an event with a bad identifier, encoded as a producer would
    event = new_event(
        CUSTOMER,
        "BAD",
        tenant="portal.example.com",
        reseller_id=RESELLER,
        event_id="evt-1",
        occurred_at=datetime(2024, 5, 1, tzinfo=UTC),
    )
    body, content_type, headers = encode(event, encoding)
    # When the operator sets a new identifier and clears the reseller
    edited = edit_body(
        body,
        content_type=content_type,
        headers=headers,
        edits={"internalIdentifier": "GOOD-7", "resellerId": None},
    )
    # Then the intake reads the corrected event, everything else unchanged
    decoded = decode_event(edited, content_type, headers)
    assert decoded.internal_identifier == "GOOD-7"
    assert decoded.reseller_id is None
    assert decoded.event_id == "evt-1"
    assert str(decoded.customer_id) == CUSTOMER
    assert decoded.tenant == "portal.example.com"
    if encoding is Encoding.STRUCTURED:
        # Structured CloudEvents keep the fields inside data, never beside it
        document = json.loads(edited)
        assert "internalIdentifier" not in document
        assert document["data"]["internalIdentifier"] == "GOOD-7"


def test_unknown_fields_and_non_ascii_text_survive_an_edit() -> None:
    body = json.dumps({"eventId": "e", "internalIdentifier": "x", "vendorField": [1, {"a": "é"}]})
    edited = edit_body(
        body.encode(),
        content_type="application/json",
        headers={},
        edits={"internalIdentifier": "Zoë"},
    )
    assert json.loads(edited) == {
        "eventId": "e",
        "internalIdentifier": "Zoë",
        "vendorField": [1, {"a": "é"}],
    }


def test_no_edit_leaves_the_bytes_alone() -> None:
    body = b'{"eventId":  "e"}'
    assert edit_body(body, content_type=None, headers={}, edits={}) is body


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\xff\xfe", "application/json", "not UTF-8 JSON"),
        (b"not json", "application/json", "not UTF-8 JSON"),
        (b"[1, 2]", "application/json", "not a JSON object"),
        (b'{"id": "e", "data": "text"}', "application/cloudevents+json", "no data object"),
    ],
)
def test_bodies_that_cannot_be_edited_are_refused(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(DeadLetterError, match=message):
        edit_body(body, content_type=content_type, headers={}, edits={"internalIdentifier": "x"})
