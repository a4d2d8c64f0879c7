"""``ccsync ingest`` decoding: each HTTP form becomes the AMQP message a producer would send, and
the intake reads from it exactly the event ingest validated."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from starlette.datastructures import Headers

from worker.events import decode_event
from worker.ingest.decoding import (
    MAX_REPORTED_PROBLEMS,
    BatchTooLarge,
    InvalidRequest,
    Outgoing,
    UnsupportedMediaType,
    decode_request,
)

LIMIT = 4096
MAX_BATCH = 10
BATCH = "application/cloudevents-batch+json"
CUSTOMER = str(uuid.uuid4())
NATIVE: dict[str, Any] = {
    "eventId": "e-1",
    "eventType": "customer.internal-identifier.changed",
    "occurredAt": "2026-01-01T00:00:00Z",
    "customerId": CUSTOMER,
    "internalIdentifier": "ERP-1",
}
CLOUD_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "type": "customer.internal-identifier.changed",
    "id": "e-2",
    "source": "crm",
    "time": "2026-01-01T00:00:00Z",
    "data": {"customerId": CUSTOMER, "internalIdentifier": "ERP-2", "tenant": "p.example.com"},
}


def _decode(body: bytes, **headers: str) -> list[Outgoing]:
    return decode_request(
        body,
        Headers({k.replace("_", "-"): v for k, v in headers.items()}),
        max_event_bytes=LIMIT,
        max_batch_events=MAX_BATCH,
    )


def _as_the_intake_reads(message: Outgoing) -> dict[str, Any]:
    return decode_event(message.body, message.content_type, message.headers).to_wire()


def test_given_native_json_then_republished_as_is() -> None:
    body = json.dumps(NATIVE).encode()

    [message] = _decode(body, content_type="application/json; charset=utf-8")

    assert (message.body, message.headers, message.event_id) == (body, {}, "e-1")
    assert _as_the_intake_reads(message)["internalIdentifier"] == "ERP-1"


def test_given_structured_mode_then_republished_as_is() -> None:
    body = json.dumps(CLOUD_EVENT).encode()

    [message] = _decode(body, content_type="application/cloudevents+json")

    assert (message.body, message.content_type) == (body, "application/cloudevents+json")
    assert _as_the_intake_reads(message)["eventId"] == "e-2"


def test_given_binary_mode_then_the_attributes_become_cloudevents_amqp_headers() -> None:
    body = json.dumps(CLOUD_EVENT["data"]).encode()
    attributes = {f"ce_{k}": v for k, v in CLOUD_EVENT.items() if k != "data"}
    attributes["ce_source"] = "crm%2Fde"

    [message] = _decode(body, content_type="application/json", **attributes)

    assert message.body == body
    assert message.headers["cloudEvents:id"] == "e-2"
    assert message.headers["cloudEvents:source"] == "crm/de"  # percent-decoded, as the binding says
    assert _as_the_intake_reads(message)["tenant"] == "p.example.com"


def test_given_a_batch_then_one_structured_message_per_event_in_order() -> None:
    second = {**CLOUD_EVENT, "id": "e-3"}
    body = json.dumps([CLOUD_EVENT, second]).encode()

    messages = _decode(body, content_type="application/cloudevents-batch+json")

    assert [m.event_id for m in messages] == ["e-2", "e-3"]
    assert {m.content_type for m in messages} == {"application/cloudevents+json"}
    assert [json.loads(m.body) for m in messages] == [CLOUD_EVENT, second]


def test_given_an_empty_batch_then_nothing_to_publish() -> None:
    assert _decode(b"[]", content_type="application/cloudevents-batch+json") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[1, {}]", "body"),
        (b"{}", "body"),
        (b"[", "body"),
    ],
)
def test_given_a_batch_that_is_no_array_of_objects_then_invalid(body: bytes, field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        _decode(body, content_type="application/cloudevents-batch+json")

    assert {problem.field for problem in error.value.problems} == {field}


def test_given_every_field_wrong_then_every_field_is_named() -> None:
    event = {**NATIVE, "customerId": "x", "occurredAt": 5, "internalIdentifier": "y" * 300}
    del event["eventId"]

    with pytest.raises(InvalidRequest) as error:
        _decode(json.dumps(event).encode(), content_type="application/json")

    assert sorted(p.field for p in error.value.problems) == [
        "customerId",
        "eventId",
        "internalIdentifier",
        "occurredAt",
    ]


def test_given_a_body_that_is_no_json_object_then_one_problem_on_the_body() -> None:
    with pytest.raises(InvalidRequest) as error:
        _decode(b"\xff", content_type="application/json")

    [problem] = error.value.problems
    assert (problem.field, problem.event) == ("body", None)
    assert "UTF-8" in problem.detail


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/cloudevents+xml"])
def test_given_another_media_type_then_unsupported(content_type: str | None) -> None:
    headers = {} if content_type is None else {"content_type": content_type}

    with pytest.raises(UnsupportedMediaType, match="application/cloudevents-batch\\+json"):
        _decode(json.dumps(NATIVE).encode(), **headers)


def test_given_a_batch_of_more_events_than_the_limit_then_refused_before_any_is_validated() -> None:
    body = json.dumps([{}] * (MAX_BATCH + 1)).encode()

    with pytest.raises(BatchTooLarge, match=f"holds {MAX_BATCH + 1} events; at most {MAX_BATCH}"):
        _decode(body, content_type=BATCH)


def test_given_a_batch_at_the_limit_then_accepted() -> None:
    events = [{**CLOUD_EVENT, "id": f"e-{index}"} for index in range(MAX_BATCH)]

    assert len(_decode(json.dumps(events).encode(), content_type=BATCH)) == MAX_BATCH


def test_given_more_problems_than_reported_then_the_first_ones_and_the_count_of_all() -> None:
    # Given a batch of events whose every one has a wrong specversion
    many = MAX_REPORTED_PROBLEMS + 5
    events = [{**CLOUD_EVENT, "id": f"e-{index}", "specversion": "0.3"} for index in range(many)]

    # When it is decoded
    with pytest.raises(InvalidRequest) as error:
        decode_request(
            json.dumps(events).encode(),
            Headers({"content-type": BATCH}),
            max_event_bytes=LIMIT,
            max_batch_events=many,
        )

    # Then the first problems are reported, in order, and all of them are counted
    problems = error.value.problems
    assert [problem.event for problem in problems] == list(range(MAX_REPORTED_PROBLEMS))
    assert error.value.count == many


def test_given_a_lone_surrogate_in_a_batch_event_then_invalid_naming_the_event() -> None:
    # json.dumps escapes the lone surrogate: the body is valid JSON, its text is not Unicode
    body = json.dumps([CLOUD_EVENT, {**CLOUD_EVENT, "note": "\ud800"}]).encode()

    with pytest.raises(InvalidRequest) as error:
        _decode(body, content_type=BATCH)

    [problem] = error.value.problems
    assert (problem.event, problem.field) == (1, "body")
    assert "surrogate" in problem.detail
