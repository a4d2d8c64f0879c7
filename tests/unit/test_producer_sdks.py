"""What the producers' own SDKs write is what ccsync reads (contract section 3): each binding of
the official CloudEvents SDK for Python, in both modes, decoded as the worker receives it.

The worker reads AMQP headers through py-amqp: strings and integers arrive as sent, an AMQP
timestamp as a naive ``datetime`` in UTC. The integration tests (test_producer_sdks.py) send
the same messages through the broker.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import SecretStr

from tests.integration.events import native
from tests.producer_sdks import (
    AMQP_PUBLICATIONS,
    amqp_binding,
    amqp_publication,
    http_binding,
    rabbitmq_binding,
    standard_webhooks_headers,
)
from worker.events import IdentifierChanged, decode_event
from worker.exceptions import InvalidEvent
from worker.ingest.authentication import Credentials, SignedRequest, authenticate
from worker.ingest.decoding import decode_request
from worker.observability.tracing import producer_trace_headers
from worker.settings import webhook_secret_key

TENANT = "portal.example.com"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#: When the events happened: with milliseconds, which the AMQP binding keeps and an AMQP
#: timestamp (whole seconds) does not.
OCCURRED_AT = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def _event() -> dict[str, Any]:
    return native(occurred_at=OCCURRED_AT, tenant=TENANT, identifier="SDK-1")


def _assert_is(decoded: IdentifierChanged, event: dict[str, Any], *, occurred_at: datetime) -> None:
    assert decoded.event_id == event["eventId"]
    assert str(decoded.customer_id) == event["customerId"]
    assert decoded.internal_identifier == "SDK-1"
    assert decoded.tenant == TENANT
    assert decoded.source == "tests/sdk"
    assert decoded.occurred_at == occurred_at


def _as_py_amqp_reads(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers as the worker's py-amqp hands them over: a timestamp (sent in whole seconds)
    naive, in UTC."""
    return {
        name: value.astimezone(UTC).replace(tzinfo=None, microsecond=0)
        if isinstance(value, datetime)
        else value
        for name, value in headers.items()
    }


@pytest.mark.parametrize(("binding", "mode", "amqp_timestamp"), AMQP_PUBLICATIONS)
def test_given_the_amqp_or_rabbitmq_binding_then_the_event_is_decoded_with_its_time(
    binding: str, mode: str, amqp_timestamp: bool
) -> None:
    # Given an event as the SDK's binding writes it (AMQP binary: cloudEvents_* properties, time
    # in milliseconds or as an AMQP timestamp; RabbitMQ binary: ce-* headers)
    event = _event()
    body, content_type, headers = amqp_publication(
        event, binding, mode, amqp_timestamp=amqp_timestamp
    )

    # When the worker decodes it
    decoded = decode_event(body, content_type, _as_py_amqp_reads(headers))

    # Then it is the event; occurredAt to the millisecond, or to the second of a timestamp, in UTC
    expected = OCCURRED_AT.replace(microsecond=0) if amqp_timestamp else OCCURRED_AT
    _assert_is(decoded, event, occurred_at=expected)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_given_the_http_binding_at_ingest_then_what_it_publishes_decodes_to_the_event(
    mode: str,
) -> None:
    # Given a request as the SDK's HTTP binding writes it
    event = _event()
    request = http_binding(event, mode)

    # When ingest decodes it, and the worker the message ingest publishes
    [outgoing] = decode_request(
        request.body, request.headers, max_event_bytes=65536, max_batch_events=10
    )
    decoded = decode_event(outgoing.body, outgoing.content_type, outgoing.headers)

    # Then it is the event
    assert outgoing.event_id == event["eventId"]
    _assert_is(decoded, event, occurred_at=OCCURRED_AT)


def test_given_the_kafka_prefix_ce_underscore_then_binary_mode_is_read() -> None:
    # Given the RabbitMQ binding's headers renamed to the Kafka binding's ce_ prefix (events
    # bridged from Kafka keep their headers)
    event = _event()
    message = rabbitmq_binding(event, "binary")
    headers = {name.replace("ce-", "ce_", 1): value for name, value in message.headers.items()}

    # When the worker decodes it, then it is the event
    decoded = decode_event(message.body, message.content_type, headers)
    _assert_is(decoded, event, occurred_at=OCCURRED_AT)


@pytest.mark.parametrize(
    ("time", "reason"),
    [
        (10**18, "out of range"),
        (-(10**18), "out of range"),
        (True, "RFC 3339"),
        (1.5e12, "RFC 3339"),
    ],
)
def test_given_a_time_header_no_timestamp_then_invalid_event_saying_why(
    time: object, reason: str
) -> None:
    # Given the AMQP binding's binary message with a time no timestamp could be
    message = amqp_binding(_event(), "binary")
    headers = {**message.application_properties, "cloudEvents_time": time}

    # When the worker decodes it, then it is invalid, and says why
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(message.application_data, "application/json", headers)


def test_given_an_aware_timestamp_header_then_its_offset_is_kept() -> None:
    # Given a timestamp header that carries an offset (as a dead letter's replay restores it)
    message = amqp_binding(_event(), "binary")
    stamped = OCCURRED_AT.replace(microsecond=0).astimezone(timezone(timedelta(hours=2)))
    headers = {**message.application_properties, "cloudEvents_time": stamped}

    # When decoded, then the same instant, at that offset
    decoded = decode_event(message.application_data, "application/json", headers)
    assert decoded.occurred_at == stamped
    assert decoded.occurred_at.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_given_a_request_signed_by_the_standard_webhooks_library_then_it_authenticates(
    padded: bool,
) -> None:
    # Given a secret the library accepts, its base64 with or without the padding (the library
    # adds what is missing), and a request the library signed with it
    encoded = base64.b64encode(bytes(range(32))).decode()
    secret = "whsec_" + (encoded if padded else encoded.rstrip("="))
    body = b'{"eventId": "e-1"}'
    now = datetime.now(UTC)
    headers = standard_webhooks_headers(secret, message_id="msg_1", body=body, now=now)

    # When ingest checks it with the same secret as CCSYNC_INGEST_SECRET
    credentials = Credentials(token=None, webhook_key=webhook_secret_key(SecretStr(secret)))
    signed = authenticate(credentials, headers, body, now=now.timestamp())

    # Then the signature is valid
    assert signed == SignedRequest("msg_1", int(now.timestamp()))


@pytest.mark.parametrize("binding", ["amqp", "rabbitmq"])
def test_given_the_sdks_tracing_extension_in_binary_mode_then_the_producers_trace_is_read(
    binding: str,
) -> None:
    # Given a CloudEvent carrying the distributed tracing extension, in binary mode
    # (cloudEvents_traceparent or ce-traceparent)
    extensions = {"traceparent": TRACEPARENT}
    if binding == "amqp":
        headers = amqp_binding(_event(), "binary", extensions).application_properties
    else:
        headers = rabbitmq_binding(_event(), "binary", extensions).headers

    # When the worker reads the producer's trace context, then it is that one
    assert producer_trace_headers(headers, b"{}", "application/json") == {
        "traceparent": TRACEPARENT
    }
