"""Producers' own SDKs end to end (issue 29, item 5): events written by the official CloudEvents
SDK for Python, published through pika with its AMQP and RabbitMQ bindings or posted to a real
``ccsync ingest`` with its HTTP binding, and webhooks signed by the Standard Webhooks library,
are each applied at the sandbox by a real worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest

from tests.integration.events import native
from tests.integration.ingest_process import SECRET, TOKEN, IngestProcess, token_or_signature_env
from tests.integration.waiting import wait_until
from tests.producer_sdks import (
    AMQP_PUBLICATIONS,
    amqp_publication,
    http_binding,
    pika_properties,
    standard_webhooks_headers,
)
from worker.constants import EVENT_ROUTING_KEY, EVENTS_EXCHANGE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

#: Every wait on the broker is bounded (pika's own defaults wait for ever on a blocked broker).
PIKA_TIMEOUT_SECONDS = 10.0
#: How long an event may take from publish to its PATCH at the sandbox.
APPLIED_WITHIN_SECONDS = 30.0


@pytest.fixture(scope="module")
def ingest(broker_url: str) -> Iterator[IngestProcess]:
    with IngestProcess(token_or_signature_env(broker_url)) as process:
        yield process


@pytest.fixture
def pika_channel(broker_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A producer's pika channel on the session's vhost, publisher confirms on."""
    parameters = pika.URLParameters(broker_url)
    parameters.socket_timeout = PIKA_TIMEOUT_SECONDS
    parameters.blocked_connection_timeout = PIKA_TIMEOUT_SECONDS
    parameters.stack_timeout = PIKA_TIMEOUT_SECONDS
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        connection.close()


def _wait_applied(sandbox: SandboxControl, event: dict[str, Any]) -> None:
    """Until the sandbox holds the event's identifier for the customer's own relationship."""

    def identifier() -> bool:
        return any(
            customer["id"] == event["customerId"]
            and customer["relationships"].get("self") == event["internalIdentifier"]
            for customer in sandbox.state()
        )

    wait_until(
        identifier,
        timeout=APPLIED_WITHIN_SECONDS,
        what=f"event {event['eventId']} applied at the sandbox (sandbox.state())",
    )


def _event(label: str) -> dict[str, Any]:
    return native(identifier=f"{label}-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(("binding", "mode", "amqp_timestamp"), AMQP_PUBLICATIONS)
def test_given_a_cloudevents_amqp_or_rabbitmq_binding_published_with_pika_then_it_is_applied(
    worker: LocalWorker,
    sandbox: SandboxControl,
    pika_channel: pika.adapters.blocking_connection.BlockingChannel,
    binding: str,
    mode: str,
    amqp_timestamp: bool,
) -> None:
    # Given an event as the SDK's binding writes it (AMQP binary: cloudEvents_* properties, time
    # in milliseconds, or a datetime pika sends as an AMQP timestamp; RabbitMQ binary: ce-*
    # headers; structured: the whole CloudEvent as the body)
    event = _event(f"{binding}-{mode}")
    body, content_type, headers = amqp_publication(
        event, binding, mode, amqp_timestamp=amqp_timestamp
    )

    # When a producer publishes it with pika
    pika_channel.basic_publish(
        EVENTS_EXCHANGE,
        EVENT_ROUTING_KEY,
        body,
        pika_properties(content_type, headers),
        mandatory=True,
    )

    # Then the worker applies it at CloudCockpit
    _wait_applied(sandbox, event)


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("credential", ["bearer", "standard-webhooks"])
def test_given_the_cloudevents_http_binding_posted_to_ingest_then_the_event_is_applied(
    worker: LocalWorker,
    ingest: IngestProcess,
    sandbox: SandboxControl,
    mode: str,
    credential: str,
) -> None:
    # Given a request as the SDK's HTTP binding writes it, with the bearer token or signed by
    # the Standard Webhooks library
    event = _event(f"HTTP-{mode}-{credential}")
    request = http_binding(event, mode)
    proof = (
        {"Authorization": f"Bearer {TOKEN}"}
        if credential == "bearer"
        else standard_webhooks_headers(SECRET, message_id=f"msg_{uuid.uuid4()}", body=request.body)
    )

    # When it is posted to ccsync ingest
    answer = httpx.post(
        f"{ingest.url}/v1/events",
        content=request.body,
        headers={**request.headers, **proof},
        timeout=10,
    )

    # Then it is accepted, and the worker applies it at CloudCockpit
    assert answer.status_code == 202, answer.text
    assert answer.json()["eventIds"] == [event["eventId"]]
    _wait_applied(sandbox, event)


def test_given_a_native_event_signed_by_the_standard_webhooks_library_then_it_is_applied(
    worker: LocalWorker, ingest: IngestProcess, sandbox: SandboxControl
) -> None:
    # Given a native event signed by the Standard Webhooks library (not by ccsync's own code)
    event = _event("WEBHOOK")
    body = httpx.Request("POST", ingest.url, json=event).content
    signed = standard_webhooks_headers(SECRET, message_id=f"msg_{uuid.uuid4()}", body=body)

    # When it is posted to ccsync ingest
    answer = httpx.post(
        f"{ingest.url}/v1/events",
        content=body,
        headers={"Content-Type": "application/json", **signed},
        timeout=10,
    )

    # Then it is accepted, and the worker applies it at CloudCockpit
    assert answer.status_code == 202, answer.text
    _wait_applied(sandbox, event)
