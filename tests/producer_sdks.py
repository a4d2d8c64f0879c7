"""Events as producers' own SDKs write them: the official CloudEvents SDK for Python
(``cloudevents.core``, its HTTP, AMQP and RabbitMQ bindings) and the Standard Webhooks library.

Nothing here is hand-written wire format: each message is what the SDK returns, and the tests
publish or post it as a producer would (pika for AMQP, httpx for HTTP).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pika
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

#: The AMQP message property the AMQP binding puts ``datacontenttype`` in.
AMQP_CONTENT_TYPE = "content-type"


def sdk_cloud_event(
    event: dict[str, Any], extensions: Mapping[str, str] = MappingProxyType({})
) -> CloudEvent:
    """A native event (tests/integration/events.py ``native``) as the SDK's CloudEvent, with
    ``extensions`` as extension attributes (e.g. the tracing extension's ``traceparent``)."""
    return CloudEvent(
        {
            "type": event["eventType"],
            "source": "tests/sdk",
            "id": event["eventId"],
            "time": datetime.fromisoformat(event["occurredAt"]),
            "datacontenttype": "application/json",
            **extensions,
        },
        {
            key: event[key]
            for key in ("tenant", "customerId", "resellerId", "internalIdentifier")
            if key in event
        },
    )


def amqp_binding(
    event: dict[str, Any], mode: str, extensions: Mapping[str, str] = MappingProxyType({})
) -> ce_amqp.AMQPMessage:
    """The AMQP binding's message, ``mode`` ``binary`` or ``structured``."""
    if mode == "binary":
        return ce_amqp.to_binary_event(sdk_cloud_event(event, extensions))
    return ce_amqp.to_structured_event(sdk_cloud_event(event, extensions))


def rabbitmq_binding(
    event: dict[str, Any], mode: str, extensions: Mapping[str, str] = MappingProxyType({})
) -> ce_rabbitmq.RabbitMQMessage:
    """The RabbitMQ binding's message, ``mode`` ``binary`` or ``structured``."""
    if mode == "binary":
        return ce_rabbitmq.to_binary_event(sdk_cloud_event(event, extensions))
    return ce_rabbitmq.to_structured_event(sdk_cloud_event(event, extensions))


def http_binding(
    event: dict[str, Any], mode: str, extensions: Mapping[str, str] = MappingProxyType({})
) -> ce_http.HTTPMessage:
    """The HTTP binding's request headers and body, ``mode`` ``binary`` or ``structured``."""
    if mode == "binary":
        return ce_http.to_binary_event(sdk_cloud_event(event, extensions))
    return ce_http.to_structured_event(sdk_cloud_event(event, extensions))


def as_amqp_timestamp(headers: dict[str, Any]) -> dict[str, Any]:
    """The AMQP binding's headers with ``cloudEvents_time`` an AMQP timestamp: the SDK writes
    milliseconds since the epoch (an AMQP 1.0 timestamp); over AMQP 0-9-1, pika sends a
    ``datetime`` as the timestamp type (whole seconds)."""
    milliseconds = headers["cloudEvents_time"]
    return {**headers, "cloudEvents_time": datetime.fromtimestamp(milliseconds / 1000, UTC)}


#: The ways a producer publishes with the SDK's AMQP-side bindings: (binding, mode, and for the
#: AMQP binding in binary mode whether ``time`` is sent as an AMQP timestamp).
AMQP_PUBLICATIONS = [
    ("amqp", "binary", False),
    ("amqp", "binary", True),
    ("amqp", "structured", False),
    ("rabbitmq", "binary", False),
    ("rabbitmq", "structured", False),
]


def amqp_publication(
    event: dict[str, Any], binding: str, mode: str, *, amqp_timestamp: bool = False
) -> tuple[bytes, str | None, dict[str, Any]]:
    """The body, content type and headers a producer publishes for ``event`` with the SDK's
    ``binding`` (``amqp`` or ``rabbitmq``) in ``mode``; ``amqp_timestamp``: ``as_amqp_timestamp``
    applied to the AMQP binding's headers."""
    if binding == "rabbitmq":
        message = rabbitmq_binding(event, mode)
        return message.body, message.content_type, dict(message.headers)
    amqp_message = amqp_binding(event, mode)
    headers = dict(amqp_message.application_properties)
    if amqp_timestamp:
        headers = as_amqp_timestamp(headers)
    content_type = amqp_message.properties.get(AMQP_CONTENT_TYPE)
    return amqp_message.application_data, content_type, headers


def pika_properties(content_type: str | None, headers: dict[str, Any]) -> pika.BasicProperties:
    """A binding's content type and headers as the pika properties a producer publishes with."""
    return pika.BasicProperties(content_type=content_type, headers=headers or None, delivery_mode=2)


def standard_webhooks_headers(
    secret: str, *, message_id: str, body: bytes, now: datetime | None = None
) -> dict[str, str]:
    """The three headers a Standard Webhooks sender sets, signed by the library itself."""
    timestamp = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, body),
    }
