"""``ccsync ingest`` end to end (issue 20): events posted over HTTP, signed or with a bearer token,
in every accepted form, are published as a producer would and applied by a running worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.events import binary, native, structured
from tests.integration.ingest_process import (
    TOKEN,
    IngestProcess,
    signed_headers,
    token_or_signature_env,
)
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def ingest(broker_url: str) -> Iterator[IngestProcess]:
    with IngestProcess(token_or_signature_env(broker_url)) as process:
        yield process


def _applied(sandbox: SandboxControl, customer: str) -> list[dict[str, Any]]:
    return [
        dict(entry)
        for entry in sandbox.journal()
        if entry["method"] == "PATCH" and entry["customerId"] == customer and entry["status"] == 204
    ]


def _wait_applied(sandbox: SandboxControl, event: dict[str, Any]) -> list[dict[str, Any]]:
    return wait_until(
        lambda: _applied(sandbox, event["customerId"]),
        timeout=30,
        what=f"the PATCH of event {event['eventId']} at the sandbox",
    )


def test_given_a_signed_webhook_when_posted_then_202_and_the_event_is_applied_at_the_sandbox(
    worker: LocalWorker, ingest: IngestProcess, sandbox: SandboxControl
) -> None:
    # Given a native event, signed the Standard Webhooks way
    event = native(identifier="WEBHOOK-1")
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", **signed_headers(body)}

    # When posted to the ingest endpoint
    answer = httpx.post(f"{ingest.url}/v1/events", content=body, headers=headers, timeout=10)

    # Then it is accepted, and the worker applies it at CloudCockpit
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 1, "eventIds": [event["eventId"]]}
    [call] = _wait_applied(sandbox, event)
    assert call["body"] == {"internalIdentifier": "WEBHOOK-1", "resellerId": None}


def test_given_a_bearer_token_when_posting_each_cloudevents_mode_then_every_event_is_applied(
    worker: LocalWorker, ingest: IngestProcess, sandbox: SandboxControl
) -> None:
    # Given one event for structured mode, one for binary mode and two in a batch
    events = [native(identifier=f"CE-{n}") for n in range(4)]
    data, _ = binary(events[1], "cloudEvents:")
    binary_headers = {
        "ce-specversion": "1.0",
        "ce-type": events[1]["eventType"],
        "ce-id": events[1]["eventId"],
        "ce-source": "tests/crm",
        "ce-time": events[1]["occurredAt"],
    }
    batch = [json.loads(structured(event)) for event in events[2:]]

    # When each is posted with the bearer token
    answers = [
        httpx.post(
            f"{ingest.url}/v1/events",
            content=content,
            headers={**BEARER, "Content-Type": content_type, **extra},
            timeout=10,
        )
        for content, content_type, extra in [
            (structured(events[0]), "application/cloudevents+json", {}),
            (data, "application/json", binary_headers),
            (json.dumps(batch).encode(), "application/cloudevents-batch+json", {}),
        ]
    ]

    # Then each request is accepted, and all four events are applied with their own values
    assert [answer.status_code for answer in answers] == [202, 202, 202], [a.text for a in answers]
    assert answers[2].json() == {"accepted": 2, "eventIds": [e["eventId"] for e in events[2:]]}
    for event in events:
        [call] = _wait_applied(sandbox, event)
        assert call["body"]["internalIdentifier"] == event["internalIdentifier"]


def test_given_an_event_posted_twice_then_it_is_applied_once(
    worker: LocalWorker, ingest: IngestProcess, sandbox: SandboxControl
) -> None:
    # Given a signed event whose producer posts it again as a new webhook (same eventId, another
    # webhook-id: a repeated webhook-id would not even be published, see test_ingest_replays)
    event = native(identifier="RETRIED-1")
    body = json.dumps(event).encode()

    # When it is delivered twice
    for attempt in range(2):
        headers = {"Content-Type": "application/json", **signed_headers(body)}
        answer = httpx.post(f"{ingest.url}/v1/events", content=body, headers=headers, timeout=10)
        assert answer.status_code == 202, f"delivery {attempt + 1}: {answer.text}"
        if attempt == 0:
            _wait_applied(sandbox, event)

    # Then the worker absorbs the second as a duplicate: CloudCockpit is called once
    wait_until(
        lambda: any(
            "duplicate" in line and event["eventId"] in line for line in worker.log.splitlines()
        ),
        timeout=30,
        what="the worker to skip the second delivery as a duplicate",
    )
    assert len(_applied(sandbox, event["customerId"])) == 1
