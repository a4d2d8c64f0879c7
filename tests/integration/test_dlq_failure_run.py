"""Replay after a real failure run: a ``ccsync worker`` process, the sandbox, the CLI.

The sandbox answers 503 to some customers until their retries are exhausted, and 400 to others;
then, with the API healthy again (and the worker still running), the operator replays.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from tests.integration.test_dlq_support import (
    ccsync,
    fresh_queues,
    json_lines,
    keep,
    stored,
    wait_for,
)
from tests.support import REDIS_URL
from worker.amqp.event_publishing import Encoding, new_event, publish_events, publish_raw
from worker.events import correlation_id
from worker.sandbox import FaultStep, SandboxControl, SandboxServer
from worker.testing import LocalWorker

TENANT = "tests.example"

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture(scope="module")
def running_worker(broker_url: str, sandbox_server: SandboxServer) -> Iterator[LocalWorker]:
    fresh_queues(broker_url)
    env = {
        "CCSYNC_BROKER_URL": broker_url,
        "CLOUDCOCKPIT_BASE_URL": sandbox_server.url,
        "CLOUDCOCKPIT_TOKEN": "sandbox-token",
        "CLOUDCOCKPIT_TENANT": TENANT,
        "CCSYNC_RETRY_DELAYS": "0.2,0.2",
        "CCSYNC_REDIS_URL": REDIS_URL,
    }
    process = LocalWorker(env, concurrency=4).start()
    try:
        yield process
    finally:
        # Its work is done by then; a warm shutdown would only add seconds to the run.
        process.stop(timeout=2)


@pytest.fixture
def idle(broker_url: str, running_worker: LocalWorker) -> None:
    """The worker is up and the queues are empty."""
    fresh_queues(broker_url)


def publish(broker_url: str, events: list[dict[str, Any]]) -> None:
    with Connection(broker_url) as connection:
        publish_events(connection, events, Encoding.NATIVE)


def dead_letter_count(broker_url: str, expected: int) -> list[dict[str, Any]]:
    """The dead letters in the store (as ``list --json`` rows) once there are ``expected``."""

    def ready() -> list[dict[str, Any]] | None:
        keep(broker_url)  # the keeper's work, which moves them from the queue into the store
        rows = json_lines(ccsync(broker_url, "dlq", "list", "--json"))
        return rows if len(rows) >= expected else None

    rows: list[dict[str, Any]] = wait_for(ready, what=f"{expected} dead letters")
    return rows


def patches(sandbox: SandboxControl, customer: str) -> list[Any]:
    return [entry for entry in sandbox.journal(customer_id=customer) if entry["method"] == "PATCH"]


def identifier(sandbox: SandboxControl, customer: str) -> str | None:
    for view in sandbox.state():
        if view["id"] == customer:
            return view["relationships"].get("self")
    return None


def test_replay_retries_exhausted_applies_them_with_their_correlation_ids(
    broker_url: str, sandbox: SandboxControl, idle: None
) -> None:
    # Given three events whose customers get 503 on every attempt (1 + 2 retries). One at a
    # time, a healthy event after each: five failures in a row would open the outage guard,
    # which holds events without spending attempts, and nothing would be dead-lettered.
    customers = [str(uuid.uuid4()) for _ in range(3)]
    events = [new_event(c, f"CRM-{i}", source="dlq-test") for i, c in enumerate(customers)]
    for number, (customer, event) in enumerate(zip(customers, events, strict=True), start=1):
        sandbox.add_faults(customer, FaultStep(status=503, times=3))
        publish(broker_url, [event])
        dead_letter_count(broker_url, number)
        healthy = str(uuid.uuid4())
        publish(broker_url, [new_event(healthy, "OK")])
        wait_for(lambda h=healthy: identifier(sandbox, h) == "OK", what="a healthy event")
    # And one invalid event (no internalIdentifier key)
    invalid = {k: v for k, v in new_event(uuid.uuid4(), "x").items() if k != "internalIdentifier"}
    with Connection(broker_url) as connection:
        publish_raw(connection, [(json.dumps(invalid).encode(), "application/json", {})])
    # When the failure run is over
    rows = dead_letter_count(broker_url, 4)
    by_reason = {row["eventId"]: row["reason"] for row in rows}
    assert by_reason == {
        **{event["eventId"]: "retries-exhausted" for event in events},
        invalid["eventId"]: "invalid-event",
    }
    recorded = {row["eventId"]: row["correlationId"] for row in rows}
    assert all(row["attempts"] == 3 for row in rows if row["reason"] == "retries-exhausted")
    # And the operator replays them with the API healthy again, the worker still running
    result = ccsync(broker_url, "dlq", "replay", "--reason", "retries-exhausted", "--yes")
    assert result.exit_code == 0, result.output
    assert "replayed 3 of 3" in result.stdout
    # Then every one is applied
    for event, customer in zip(events, customers, strict=True):
        wait_for(
            lambda c=customer, e=event: identifier(sandbox, c) == e["internalIdentifier"],
            what=f"{customer} applied",
        )
        # With the X-Correlation-Id of its first attempts: 503, 503, 503, then 204
        calls = patches(sandbox, customer)
        assert [call["status"] for call in calls] == [503, 503, 503, 204]
        expected = str(correlation_id(TENANT, event["eventId"]))
        assert {call["headers"]["x-correlation-id"] for call in calls} == {expected}
        assert recorded[event["eventId"]] == expected
    # And the invalid event stays in the store, alone
    time.sleep(0.3)
    assert [(r.event_id, r.reason) for r in stored()] == [(invalid["eventId"], "invalid-event")]


def test_dry_run_changes_nothing_and_set_fixes_one_event_only(
    broker_url: str, sandbox: SandboxControl, idle: None
) -> None:
    # Given two events the API rejected (400 once each)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for customer in (first, second):
        sandbox.add_faults(customer, FaultStep(status=400))
    events = [new_event(first, "BAD-1"), new_event(second, "BAD-2")]
    publish(broker_url, events)
    rows = dead_letter_count(broker_url, 2)
    assert {row["reason"] for row in rows} == {"api-rejected"}
    assert {row["status"] for row in rows} == {400}
    # When the operator replays them as a dry run
    dry = ccsync(broker_url, "dlq", "replay", "--reason", "api-rejected", "--dry-run")
    # Then it says what it would do, and nothing changes: no call, both still dead-lettered
    assert dry.exit_code == 0, dry.output
    assert f"would replay {events[0]['eventId']}" in dry.stdout
    assert f"would replay {events[1]['eventId']}" in dry.stdout
    time.sleep(0.5)
    assert len(patches(sandbox, first)) == len(patches(sandbox, second)) == 1
    assert sorted(str(r.event_id) for r in stored()) == sorted(e["eventId"] for e in events)
    # When the first event is corrected and replayed
    fixed = ccsync(
        broker_url,
        "dlq",
        "replay",
        "--event-id",
        events[0]["eventId"],
        "--set",
        "internalIdentifier=FIXED-1",
    )
    assert fixed.exit_code == 0, fixed.output
    assert "replayed 1 of 1" in fixed.stdout
    # Then the corrected value is applied for that customer, with the event's correlation id
    wait_for(lambda: identifier(sandbox, first) == "FIXED-1", what="the fix applied")
    calls = patches(sandbox, first)
    assert [call["status"] for call in calls] == [400, 204]
    assert calls[1]["body"]["internalIdentifier"] == "FIXED-1"
    assert calls[1]["headers"]["x-correlation-id"] == str(
        correlation_id(TENANT, events[0]["eventId"])
    )
    # And the other event is untouched: not called again, not applied, still dead-lettered
    time.sleep(0.3)
    assert len(patches(sandbox, second)) == 1
    assert identifier(sandbox, second) is None
    assert [r.event_id for r in stored()] == [events[1]["eventId"]]
