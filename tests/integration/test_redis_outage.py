"""Issue 4: Redis stopped for 10 s mid-run: nothing lost, nothing applied blindly, newest wins."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import worker_env
from tests.integration.events import native
from tests.integration.producer import Producer
from tests.integration.redis_process import RedisProcess
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes, outcome_counts
from worker.events import correlation_id
from worker.runtime.intake import PREFETCH_PER_CALL
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")


def test_given_redis_stopped_for_10s_mid_run_then_every_event_reaches_an_outcome(
    broker_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
    producer: Producer,
    tmp_path: Path,
) -> None:
    # Given 40 customers with 3 versions each, shuffled, and a worker on a Redis of its own
    base = datetime(2026, 3, 1, tzinfo=UTC)
    history = {}
    for c in range(40):
        customer = native()["customerId"]
        history[customer] = [
            native(customer, f"R{c:02d}-V{v}", occurred_at=base + timedelta(seconds=v))
            for v in range(3)
        ]
    messages = [event for events in history.values() for event in events]
    random.Random(7).shuffle(messages)
    sandbox.configure(latency_ms=100)
    with RedisProcess(tmp_path) as redis:
        env = worker_env(broker_url, sandbox_server.url, redis.url)
        with LocalWorker(env, concurrency=4) as worker:
            for event in messages:
                producer.publish(json.dumps(event).encode(), "application/json")
            wait_until(lambda: len(final_outcomes(worker)) >= 20, 30, "the run to be under way")

            # When Redis stops for 10 s in the middle of the run
            redis.stop()
            time.sleep(10)
            redis.start()

            # Then every event reaches an outcome, none lost
            wait_until(
                lambda: len(final_outcomes(worker)) >= len(messages),
                timeout=120,
                what=f"{len(messages)} final outcomes",
            )
            counts = outcome_counts(worker)
            applied = {
                event_id for event_id, outcome in final_outcomes(worker) if outcome == "applied"
            }
            assert "ledger unavailable" in worker.log

    assert sum(counts.values()) == len(messages)
    assert counts["dead-lettered"] == 0
    # And the API ends with the newest value of every customer
    final = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    for customer, events in history.items():
        assert final[customer] == events[-1]["internalIdentifier"]
    # A call that succeeded just as Redis went away could not be recorded, so its retry sends it
    # again, with the same X-Correlation-Id: at most the events then in hand, the calls in flight
    # (concurrency 4) and those whose locks the gate had taken ahead (the prefetch).
    sent = [e["headers"]["x-correlation-id"] for e in sandbox.journal() if e["method"] == "PATCH"]
    tenant = env["CLOUDCOCKPIT_TENANT"]
    assert {str(correlation_id(tenant, event_id)) for event_id in applied} <= set(sent)
    assert len(sent) - len(applied) <= 4 + PREFETCH_PER_CALL * 4
