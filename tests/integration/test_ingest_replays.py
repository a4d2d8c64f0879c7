"""``ccsync ingest`` publishes a signed webhook once: a delivery repeating a ``webhook-id`` seen
within the tolerance window is answered as the first was, and publishes nothing (issue 27, item 8).

No worker runs here, so whatever ingest publishes stays in ``ccsync.events`` to be counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.events import native
from tests.integration.ingest_process import SECRET, TOKEN, IngestProcess, signed_headers
from tests.integration.producer import queue_depth
from tests.support import free_port
from worker.constants import EVENTS_QUEUE

pytestmark = pytest.mark.usefixtures("clean_queues")

JSON = {"Content-Type": "application/json"}


def _env(broker_url: str, redis_url: str) -> dict[str, str]:
    return {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_REDIS_URL": redis_url,
        "CCSYNC_INGEST_TOKEN": TOKEN,
        "CCSYNC_INGEST_SECRET": SECRET,
    }


@pytest.fixture(scope="module")
def ingest(broker_url: str, redis_url: str) -> Iterator[IngestProcess]:
    with IngestProcess(_env(broker_url, redis_url)) as process:
        yield process


def _deliver(url: str, body: bytes, message_id: str, *, timestamp: int) -> httpx.Response:
    headers = {**JSON, **signed_headers(body, message_id=message_id, timestamp=timestamp)}
    return httpx.post(f"{url}/v1/events", content=body, headers=headers, timeout=15)


def test_given_a_webhook_delivered_again_with_its_id_then_answered_alike_and_published_once(
    ingest: IngestProcess, broker_url: str
) -> None:
    # Given a signed webhook
    event = native()
    body = json.dumps(event).encode()
    message_id = f"msg-{uuid.uuid4()}"
    now = int(time.time())

    # When its sender delivers it three times, re-signing each retry with a new timestamp
    answers = [_deliver(ingest.url, body, message_id, timestamp=now + n) for n in range(3)]

    # Then each delivery is answered 202 with the first answer, and the event is published once
    assert [answer.status_code for answer in answers] == [202, 202, 202], answers[-1].text
    expected = {"accepted": 1, "eventIds": [event["eventId"]]}
    assert [answer.json() for answer in answers] == [expected] * 3
    assert queue_depth(broker_url, EVENTS_QUEUE) == 1


def test_given_two_webhooks_with_the_same_body_but_their_own_ids_then_both_are_published(
    ingest: IngestProcess, broker_url: str
) -> None:
    body = json.dumps(native()).encode()
    now = int(time.time())

    for message_id in (f"msg-{uuid.uuid4()}", f"msg-{uuid.uuid4()}"):
        assert _deliver(ingest.url, body, message_id, timestamp=now).status_code == 202

    assert queue_depth(broker_url, EVENTS_QUEUE) == 2


def test_given_redis_out_of_reach_then_a_signed_webhook_is_answered_503_and_nothing_published(
    broker_url: str,
) -> None:
    # Given ingest whose Redis nobody answers for: it cannot tell a repeated webhook-id
    with IngestProcess(_env(broker_url, f"redis://127.0.0.1:{free_port()}/0")) as process:
        body = json.dumps(native()).encode()

        # When a signed webhook arrives, and a request with the bearer token
        signed = _deliver(process.url, body, f"msg-{uuid.uuid4()}", timestamp=int(time.time()))
        bearer = httpx.post(
            f"{process.url}/v1/events",
            content=body,
            headers={**JSON, "Authorization": f"Bearer {TOKEN}"},
            timeout=15,
        )

    # Then the webhook is answered 503 with Retry-After (its sender retries), nothing published
    assert signed.status_code == 503, signed.text
    assert signed.headers["content-type"] == "application/problem+json"
    assert int(signed.headers["retry-after"]) > 0
    # And the bearer request, which carries no webhook-id, is published as before
    assert bearer.status_code == 202, bearer.text
    assert queue_depth(broker_url, EVENTS_QUEUE) == 1
