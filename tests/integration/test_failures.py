"""Issue 3: every outcome of a call, with CCSYNC_RETRY_DELAYS=1,2,3 and a real worker."""

from __future__ import annotations

import json
import uuid
from itertools import pairwise
from typing import Any

import pytest

from tests.integration.conftest import dead_letter_after_retries
from tests.integration.events import native
from tests.integration.journal import patches, wait_applied
from tests.integration.producer import Producer, read_dead_letters
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")


def _publish(producer: Producer, event: dict[str, Any]) -> None:
    producer.publish(json.dumps(event).encode(), "application/json")


def _gaps(calls: list[dict[str, Any]]) -> list[float]:
    return [b["receivedAt"] - a["receivedAt"] for a, b in pairwise(calls)]


def test_given_500_500_204_then_applied_on_attempt_3_after_backoff(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    event = native()
    sandbox.add_faults(event["customerId"], {"status": 500}, {"status": 500})
    _publish(producer, event)
    calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls] == [500, 500, 204]
    first_gap, second_gap = _gaps(calls)
    assert first_gap >= 0.95
    assert second_gap >= 1.95
    assert len({call["headers"]["x-correlation-id"] for call in calls}) == 1


def test_given_always_500_then_dead_lettered_after_4_attempts(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    event, letter = dead_letter_after_retries(sandbox, producer, broker_url)
    headers = letter.headers
    assert headers["x-ccsync-reason"] == "retries-exhausted"
    assert headers["x-ccsync-attempts"] == 4
    assert headers["x-ccsync-status"] == 500
    assert headers["x-ccsync-event-id"] == event["eventId"]
    assert json.loads(letter.body) == event
    assert len(patches(sandbox, event["customerId"])) == 4
    calls = patches(sandbox, event["customerId"])
    assert headers["x-ccsync-correlation-id"] == calls[0]["headers"]["x-correlation-id"]
    for header in ("x-ccsync-first-attempt-at", "x-ccsync-dead-lettered-at"):
        assert headers[header]


@pytest.mark.parametrize("status", [400, 404])
def test_given_a_rejection_then_dead_lettered_after_one_attempt_with_the_api_error(
    status: int, worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    event = native()
    sandbox.add_faults(event["customerId"], {"status": status})
    _publish(producer, event)
    [letter] = read_dead_letters(broker_url, expected=1, timeout=30)
    assert letter.headers["x-ccsync-reason"] == "api-rejected"
    assert letter.headers["x-ccsync-status"] == status
    assert letter.headers["x-ccsync-attempts"] == 1
    [call] = patches(sandbox, event["customerId"])
    assert call["status"] == status
    # the description of the API's error body, as the sandbox answered it
    assert "Fault injected by the sandbox" in letter.headers["x-ccsync-error"]


def test_given_429_with_retry_after_2_then_the_retry_waits_2_seconds(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    # A tenant of its own: the 429 holds every call of its tenant for 2 s, fleet-wide
    event = native(tenant=f"limited-{uuid.uuid4().hex[:8]}.example.com")
    sandbox.add_faults(event["customerId"], {"status": 429, "retryAfter": 2})
    _publish(producer, event)
    calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls] == [429, 204]
    assert _gaps(calls)[0] >= 1.95


def test_given_a_dropped_connection_and_a_503_then_both_are_retried(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    event = native()
    sandbox.add_faults(event["customerId"], {"drop": True}, {"status": 503})
    _publish(producer, event)
    calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls][-1] == 204
    assert len(calls) == 3


def test_given_an_expired_token_then_a_new_one_is_fetched_and_the_call_succeeds(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    warm_up = native()
    _publish(producer, warm_up)
    wait_applied(sandbox, warm_up["customerId"])
    sandbox.expire_tokens()
    event = native()
    _publish(producer, event)
    calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls] == [401, 204]
    old, new = (call["headers"]["authorization"] for call in calls)
    assert old != new
    renewals = [
        entry
        for entry in sandbox.journal()
        if entry["path"].endswith("/oauth2/v2.0/token")
        and calls[0]["seq"] < entry["seq"] < calls[1]["seq"]
    ]
    assert len(renewals) == 1
