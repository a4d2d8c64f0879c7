"""Issue 2: invalid messages end in the dead-letter queue; the worker carries on."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.events import native
from tests.integration.producer import Producer, read_dead_letters
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")


def _invalid_messages() -> dict[str, bytes]:
    bad_uuid = native(customer_id="not-a-uuid")
    long_identifier = native(identifier="x" * 256)
    missing_id = native()
    del missing_id["eventId"]
    wrong_type = native(eventType="customer.deleted")
    return {
        "bad UUID": json.dumps(bad_uuid).encode(),
        "identifier of 256 chars": json.dumps(long_identifier).encode(),
        "malformed JSON": b'{"eventId": "e-1", "customerId": ',
        "missing eventId": json.dumps(missing_id).encode(),
        "wrong eventType": json.dumps(wrong_type).encode(),
        # Latin-1, as a misconfigured producer would send it
        "not UTF-8": json.dumps(native(identifier="caf\u00e9"), ensure_ascii=False).encode(
            "latin-1"
        ),
    }


def test_given_six_kinds_of_invalid_message_then_each_is_dead_lettered_and_none_is_sent(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    # Given six invalid messages, each marked so that its dead letter can be recognised
    messages = _invalid_messages()

    # When a producer publishes them, then one valid event
    for kind, body in messages.items():
        producer.publish(body, "application/json", {"x-test-kind": kind})
    valid = native(identifier="STILL-RUNNING")
    producer.publish(json.dumps(valid).encode(), "application/json")

    # Then each is in the dead-letter queue as invalid-event, with its body kept byte for byte
    letters = read_dead_letters(broker_url, expected=len(messages))
    by_kind = {letter.headers.get("x-test-kind"): letter for letter in letters}
    assert set(by_kind) == set(messages)
    for kind, letter in by_kind.items():
        assert letter.headers["x-ccsync-reason"] == "invalid-event", kind
        assert letter.headers["x-ccsync-error"], kind
        assert letter.body == messages[kind], kind
        assert letter.content_type == "application/json"
    assert "internalIdentifier" in by_kind["identifier of 256 chars"].headers["x-ccsync-error"]
    assert "customerId" in by_kind["bad UUID"].headers["x-ccsync-error"]
    assert "UTF-8" in by_kind["not UTF-8"].headers["x-ccsync-error"]
    assert "eventType" in by_kind["wrong eventType"].headers["x-ccsync-error"]

    # And the worker kept running: the valid event after them is applied, and nothing else is sent
    wait_until(
        lambda: any(c["relationships"] == {"self": "STILL-RUNNING"} for c in sandbox.state()),
        timeout=30,
        what="the valid event published after the invalid ones",
    )
    patches = [entry for entry in sandbox.journal() if entry["method"] == "PATCH"]
    assert [entry["customerId"] for entry in patches] == [valid["customerId"]]
    assert worker.alive


def test_given_an_event_from_a_clock_years_ahead_then_it_is_dead_lettered_and_later_updates_apply(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    # Given a producer whose clock runs years ahead, and a customer
    customer = str(uuid.uuid4())
    ahead = native(
        customer, "FROM-THE-FUTURE", occurred_at=datetime.now(UTC) + timedelta(days=3 * 365)
    )

    # When it publishes an event, and then a correct producer publishes a real update
    producer.publish(json.dumps(ahead).encode(), "application/json")
    (letter,) = read_dead_letters(broker_url, expected=1)
    producer.publish(json.dumps(native(customer, "REAL-UPDATE")).encode(), "application/json")

    # Then the event from the future is an invalid event saying why, its bytes kept
    assert letter.headers["x-ccsync-reason"] == "invalid-event"
    assert "occurredAt" in letter.headers["x-ccsync-error"]
    assert "CCSYNC_MAX_CLOCK_SKEW_SECONDS" in letter.headers["x-ccsync-error"]
    assert letter.body == json.dumps(ahead).encode()

    # And the real update is applied, not acknowledged as stale
    wait_until(
        lambda: any(c["relationships"] == {"self": "REAL-UPDATE"} for c in sandbox.state()),
        timeout=30,
        what="the real update after the event from the future",
    )
    patches = [entry for entry in sandbox.journal() if entry["method"] == "PATCH"]
    assert [entry["customerId"] for entry in patches] == [customer]


def test_given_an_event_a_little_ahead_of_the_worker_clock_then_it_is_applied(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given a producer whose clock is a minute ahead: within the tolerated skew (default 300 s)
    event = native(
        identifier="SLIGHTLY-AHEAD", occurred_at=datetime.now(UTC) + timedelta(minutes=1)
    )

    # When it publishes an event
    producer.publish(json.dumps(event).encode(), "application/json")

    # Then the event is applied
    wait_until(
        lambda: any(c["relationships"] == {"self": "SLIGHTLY-AHEAD"} for c in sandbox.state()),
        timeout=30,
        what="the event a minute ahead",
    )
