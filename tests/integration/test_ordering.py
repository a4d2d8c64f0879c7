"""Issue 4: the newest event of each relationship wins; duplicates are absorbed; across workers."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu import Connection

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer, queue_depth
from tests.integration.test_dlq_support import keep, this_tests_store
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes, outcome_counts
from worker.constants import DEAD_LETTER_QUEUE
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.stored_replay import replay_stored
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker


def _history(customers: int, versions: int) -> dict[str, list[dict[str, Any]]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    history = {}
    for c in range(customers):
        customer = native()["customerId"]
        history[customer] = [
            native(customer, f"C{c:02d}-V{v}", occurred_at=base + timedelta(seconds=v))
            for v in range(versions)
        ]
    return history


def _identifiers(sandbox: SandboxControl) -> dict[str, Any]:
    return {c["id"]: c["relationships"].get("self") for c in sandbox.state()}


def test_given_shuffled_duplicated_events_and_two_workers_then_the_newest_wins_once(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given 50 customers with 5 versions each, every event published twice, in shuffled order
    history = _history(50, 5)
    messages = [event for events in history.values() for event in events] * 2
    random.Random(4).shuffle(messages)
    sandbox.configure(latency_ms=5)
    env = own_worker_env()

    # When two worker processes with concurrency 4 consume them
    with LocalWorker(env, concurrency=4) as first, LocalWorker(env, concurrency=4) as second:
        for event in messages:
            producer.publish(json.dumps(event).encode(), "application/json")
        wait_until(
            lambda: len(final_outcomes(first, second)) >= len(messages),
            timeout=90,
            what=f"{len(messages)} final outcomes",
        )
        counts = outcome_counts(first, second)

    # Then CloudCockpit holds the newest identifier of every customer
    final = _identifiers(sandbox)
    for customer, events in history.items():
        assert final[customer] == events[-1]["internalIdentifier"]
    # And no event was sent twice: one PATCH per correlation id at most
    sent = Counter(
        entry["headers"]["x-correlation-id"]
        for entry in sandbox.journal()
        if entry["method"] == "PATCH"
    )
    assert max(sent.values()) == 1
    assert counts["applied"] == sum(sent.values())
    assert counts["applied"] + counts["is stale"] + counts["is a duplicate"] == len(messages)
    assert counts["is a duplicate"] + counts["is stale"] >= len(messages) // 2


@pytest.mark.usefixtures("clean_environment")  # the dead-letter store in the test's directory
def test_given_a_stale_dead_letter_when_replayed_then_it_is_skipped(
    own_worker_env: WorkerEnv,
    broker_url: str,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given an older event that was dead-lettered, and a newer one that was applied since
    older = native(identifier="OLD")
    newer = native(
        older["customerId"],
        "NEW",
        occurred_at=datetime.fromisoformat(older["occurredAt"]) + timedelta(minutes=1),
    )
    sandbox.add_faults(older["customerId"], {"status": 404})
    env = own_worker_env()
    with LocalWorker(env, concurrency=4) as worker:
        producer.publish(json.dumps(older).encode(), "application/json")
        wait_until(lambda: queue_depth(broker_url, DEAD_LETTER_QUEUE) == 1, 30, "the dead letter")
        producer.publish(json.dumps(newer).encode(), "application/json")
        wait_until(lambda: _identifiers(sandbox).get(older["customerId"]) == "NEW", 30, "NEW")

        # When the keeper takes it in and an operator replays it
        keep(broker_url)
        with Connection(broker_url) as connection, this_tests_store() as store:
            chosen = DeadLetterFilter.build(event_ids=[older["eventId"]])
            report = replay_stored(store, connection, chosen, who="tests")
        assert report.replayed == 1

        # Then it is skipped as stale: no second call, the newer value stays
        wait_until(
            lambda: (older["eventId"], "is stale") in final_outcomes(worker),
            timeout=30,
            what="the replayed event to be judged stale",
        )
    calls = [e for e in sandbox.journal(customer_id=older["customerId"]) if e["method"] == "PATCH"]
    assert [call["status"] for call in calls] == [404, 204]
    assert _identifiers(sandbox)[older["customerId"]] == "NEW"


def test_given_a_call_that_timed_out_and_lands_late_then_a_newer_event_still_wins(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given an older event whose call the client gives up on after 1 s, but which the API
    # applies 3 s after receiving it
    env = own_worker_env(CCSYNC_HTTP_TIMEOUT="1")
    older = native(identifier="OLDER")
    newer = native(
        older["customerId"],
        "NEWER",
        occurred_at=datetime.fromisoformat(older["occurredAt"]) + timedelta(seconds=1),
    )
    sandbox.add_faults(older["customerId"], {"delayMs": 3000})
    with LocalWorker(env, concurrency=4) as worker:
        producer.publish(json.dumps(older).encode(), "application/json")
        wait_until(lambda: "ReadTimeout" in worker.log, 20, "the older call to time out")
        # When the newer event arrives while the older call is still being applied
        producer.publish(json.dumps(newer).encode(), "application/json")
        wait_until(
            lambda: (newer["eventId"], "applied") in final_outcomes(worker),
            timeout=90,
            what="the newer event to be applied",
        )
        wait_until(
            lambda: (
                (older["eventId"], "is stale") in final_outcomes(worker)
                or (older["eventId"], "applied") in final_outcomes(worker)
            ),
            timeout=90,
            what="the older event's retry to settle",
        )
    # Then the newer value is the one CloudCockpit ends with
    assert _identifiers(sandbox)[older["customerId"]] == "NEWER"
    calls = [e for e in sandbox.journal(customer_id=older["customerId"]) if e["method"] == "PATCH"]
    late = next(c for c in calls if c["body"]["internalIdentifier"] == "OLDER")
    newest = next(c for c in calls if c["body"]["internalIdentifier"] == "NEWER")
    assert newest["respondedAt"] > late["respondedAt"]
