"""``ccsync ingest`` refuses what it must (issue 20): each refused request gets its status as a
problem details document and publishes nothing; a broker out of reach is a 503 with Retry-After.

No worker runs here, so whatever ingest publishes stays in ``ccsync.events`` to be counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT, rabbitmqctl
from tests.integration.events import native, structured
from tests.integration.ingest_process import (
    SECRET,
    TOKEN,
    IngestProcess,
    TcpProxy,
    signed_headers,
)
from tests.integration.producer import queue_depth
from tests.support import free_port
from worker.constants import BACKFILL_QUEUE, EVENTS_QUEUE

pytestmark = pytest.mark.usefixtures("clean_queues")

#: A small limit, so that an oversized body is quick to send.
MAX_EVENT_BYTES = 4096
JSON = {"Content-Type": "application/json"}
BEARER = {"Authorization": f"Bearer {TOKEN}", **JSON}


def _env(broker_url: str) -> dict[str, str]:
    return {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_INGEST_TOKEN": TOKEN,
        "CCSYNC_INGEST_SECRET": SECRET,
        "CCSYNC_MAX_EVENT_BYTES": str(MAX_EVENT_BYTES),
    }


@pytest.fixture(scope="module")
def ingest(broker_url: str) -> Iterator[IngestProcess]:
    with IngestProcess(_env(broker_url)) as process:
        yield process


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/events", content=body, headers=headers, timeout=15)


def _body(event: dict[str, Any] | None = None) -> bytes:
    return json.dumps(event or native()).encode()


def _bad_signature() -> tuple[bytes, dict[str, str]]:
    body = _body()
    headers = signed_headers(body)
    headers["webhook-signature"] = "v1," + "A" * 43 + "="
    return body, {**JSON, **headers}


def _signed_for_another_body() -> tuple[bytes, dict[str, str]]:
    return _body(), {**JSON, **signed_headers(_body())}


def _stale_timestamp() -> tuple[bytes, dict[str, str]]:
    body = _body()
    return body, {**JSON, **signed_headers(body, timestamp=int(time.time()) - 301)}


def _wrong_token() -> tuple[bytes, dict[str, str]]:
    return _body(), {"Authorization": f"Bearer {TOKEN}-not", **JSON}


def _no_credentials() -> tuple[bytes, dict[str, str]]:
    return _body(), JSON


UNAUTHENTICATED: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], str]] = {
    "bad signature": (_bad_signature, "no valid v1 signature"),
    "signature of another body": (_signed_for_another_body, "no valid v1 signature"),
    "stale timestamp": (_stale_timestamp, "webhook-timestamp is more than 300 s away"),
    "wrong token": (_wrong_token, "bearer token is not valid"),
    "no credentials": (_no_credentials, "no credentials"),
}


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = answer.json()
    assert document["status"] == status
    assert document["title"] and document["detail"]
    return document


def test_given_a_valid_request_then_its_event_waits_in_the_queue(
    ingest: IngestProcess, broker_url: str
) -> None:
    """The control: what this module counts does see what ingest publishes."""
    answer = _post(ingest.url, _body(), BEARER)

    assert answer.status_code == 202, answer.text
    assert queue_depth(broker_url, EVENTS_QUEUE) == 1


@pytest.mark.parametrize("case", list(UNAUTHENTICATED))
def test_given_no_valid_credential_then_401_and_nothing_is_published(
    ingest: IngestProcess, broker_url: str, case: str
) -> None:
    # Given a request whose credential fails in its own way
    make, reason = UNAUTHENTICATED[case]
    body, headers = make()

    # When it is posted
    answer = _post(ingest.url, body, headers)

    # Then 401 says why, and the queue stays empty
    assert reason in _problem(answer, 401)["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_an_invalid_event_then_400_names_every_invalid_field_and_nothing_is_published(
    ingest: IngestProcess, broker_url: str
) -> None:
    # Given an event with a customerId that is no UUID, an epoch time and no eventType
    event = native(customerId="not-a-uuid", occurredAt=1700000000)
    del event["eventType"]

    # When it is posted, signed
    body = _body(event)
    answer = _post(ingest.url, body, {**JSON, **signed_headers(body)})

    # Then 400 names each of the three fields, and nothing is published
    errors = _problem(answer, 400)["errors"]
    assert sorted(error["field"] for error in errors) == ["customerId", "eventType", "occurredAt"]
    assert all(error["detail"] for error in errors)
    assert "not-a-uuid" not in answer.text  # the reasons, never the values
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_a_batch_with_one_invalid_event_then_400_and_not_even_the_valid_one_is_published(
    ingest: IngestProcess, broker_url: str
) -> None:
    valid, invalid = json.loads(structured(native())), json.loads(structured(native()))
    del invalid["data"]["customerId"]
    body = json.dumps([valid, invalid]).encode()

    answer = _post(
        ingest.url, body, {**BEARER, "Content-Type": "application/cloudevents-batch+json"}
    )

    assert _problem(answer, 400)["errors"] == [
        {"event": 1, "field": "data.customerId", "detail": "Field required"}
    ]
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_binary_mode_with_a_bad_attribute_then_400_names_its_header(
    ingest: IngestProcess, broker_url: str
) -> None:
    event = native()
    headers = {**BEARER, "ce-specversion": "1.0", "ce-type": "something.else", "ce-source": "crm"}
    headers |= {"ce-id": event["eventId"], "ce-time": event["occurredAt"]}
    data = {"customerId": event["customerId"], "internalIdentifier": "X"}

    answer = _post(ingest.url, json.dumps(data).encode(), headers)

    assert [error["field"] for error in _problem(answer, 400)["errors"]] == ["ce-type"]
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_given_a_body_over_the_limit_then_413_and_nothing_is_published(
    ingest: IngestProcess, broker_url: str, declared: bool
) -> None:
    # Given an otherwise valid event padded past CCSYNC_MAX_EVENT_BYTES
    body = _body(native(padding="x" * MAX_EVENT_BYTES))

    # When it is posted with its length declared, or streamed without one
    content: bytes | Iterator[bytes] = (
        body if declared else iter([body[i : i + 1024] for i in range(0, len(body), 1024)])
    )
    answer = httpx.post(f"{ingest.url}/v1/events", content=content, headers=BEARER, timeout=15)

    # Then 413, and nothing is published
    assert str(MAX_EVENT_BYTES) in _problem(answer, 413)["detail"]
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_given_a_media_type_not_accepted_then_415_and_nothing_is_published(
    ingest: IngestProcess, broker_url: str, content_type: str | None
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type is not None:
        headers["Content-Type"] = content_type

    answer = _post(ingest.url, _body(), headers)

    assert "application/cloudevents+json" in _problem(answer, 415)["detail"]
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_the_broker_at_a_closed_port_then_503_with_retry_after(broker_url: str) -> None:
    # Given ingest pointed at a port nothing listens on
    closed = broker_url.replace(f":{RABBITMQ_PORT}/", f":{free_port()}/")
    with IngestProcess(_env(closed)) as ingest:
        # When a valid request arrives
        answer = _post(ingest.url, _body(), BEARER)

    # Then 503 asks to come back later, and the real broker got nothing
    assert "cannot publish to the broker" in _problem(answer, 503)["detail"]
    assert int(answer.headers["retry-after"]) > 0
    assert "guest:guest" not in answer.text  # the password is masked
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_the_connection_to_the_broker_cut_then_503_and_after_it_returns_202(
    broker_url: str,
) -> None:
    # Given ingest connected to the broker through a proxy, and a first event accepted
    with TcpProxy((RABBITMQ_HOST, RABBITMQ_PORT)) as proxy:
        through = broker_url.replace(f":{RABBITMQ_PORT}/", f":{proxy.port}/")
        with IngestProcess(_env(through)) as ingest:
            assert _post(ingest.url, _body(), BEARER).status_code == 202

            # When the connection is cut and a request arrives
            proxy.cut()
            answer = _post(ingest.url, _body(), BEARER)

            # Then 503 with Retry-After, and nothing more is published
            _problem(answer, 503)
            assert int(answer.headers["retry-after"]) > 0
            assert queue_depth(broker_url, EVENTS_QUEUE) == 1

            # And once the broker is reachable again, ingest reconnects by itself
            proxy.restore()
            assert _post(ingest.url, _body(), BEARER).status_code == 202
            assert queue_depth(broker_url, EVENTS_QUEUE) == 2


def test_given_no_queue_bound_to_the_exchange_then_503_instead_of_a_dropped_event() -> None:
    # Given a vhost where no worker ever ran: the broker would drop the event
    vhost = f"ccsync-ingest-empty-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        empty = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
        with IngestProcess(_env(empty)) as ingest:
            # When a valid event is posted
            answer = _post(ingest.url, _body(), BEARER)
    finally:
        rabbitmqctl("delete_vhost", vhost)

    # Then the returned (mandatory) message is a failure the producer can retry
    assert "no queue is bound to customer-events" in _problem(answer, 503)["detail"]
    assert "retry-after" in answer.headers


def test_given_lane_backfill_then_the_event_is_published_to_the_backfill_lane(
    ingest: IngestProcess, broker_url: str
) -> None:
    # When one event is posted for the backfill lane, and one names a lane that does not exist
    accepted = httpx.post(
        f"{ingest.url}/v1/events?lane=backfill", content=_body(), headers=BEARER, timeout=15
    )
    refused = httpx.post(
        f"{ingest.url}/v1/events?lane=bulk", content=_body(), headers=BEARER, timeout=15
    )

    # Then the first waits on ccsync.backfill, and the second is refused, publishing nothing
    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 400
    assert refused.json()["errors"] == [{"field": "lane", "detail": "must be 'live' or 'backfill'"}]
    assert queue_depth(broker_url, BACKFILL_QUEUE) == 1
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0
