"""Issue 2 and 3: waiting events live in the broker: a kill loses none, a long wait blocks none."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.integration.conftest import WorkerEnv, worker_env
from tests.integration.events import native
from tests.integration.journal import patches, wait_applied
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker


def _publish(producer: Producer, event: dict[str, Any]) -> None:
    producer.publish(json.dumps(event).encode(), "application/json")


def test_given_an_event_in_backoff_when_the_worker_is_killed_then_it_is_applied_after_restart(
    broker_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
    clean_queues: None,
    producer: Producer,
) -> None:
    # Given an event whose first call failed and which now waits 3 s in the delay ladder
    env = worker_env(broker_url, sandbox_server.url, CCSYNC_RETRY_DELAYS="3")
    event = native()
    sandbox.add_faults(event["customerId"], {"status": 500})
    with LocalWorker(env, concurrency=2) as first:
        _publish(producer, event)
        wait_until(lambda: patches(sandbox, event["customerId"]), 20, "the first attempt")
        # When the worker is killed with SIGKILL while the event waits
        first.kill()
    # Then a new worker applies it once the delay is over
    with LocalWorker(env, concurrency=2):
        calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls] == [500, 204]


def test_given_a_long_wait_then_a_shorter_one_behind_it_is_not_held_back(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given an event told to come back in 20 s, then one that retries after 1 s (the 429 holds
    # every call of its tenant: the slow one has a tenant of its own)
    env = own_worker_env(CCSYNC_RETRY_DELAYS="1")
    slow, quick = native(tenant=f"slow-{uuid.uuid4().hex[:8]}.example.com"), native()
    sandbox.add_faults(slow["customerId"], {"status": 429, "retryAfter": 20})
    sandbox.add_faults(quick["customerId"], {"status": 503})
    with LocalWorker(env, concurrency=2):
        _publish(producer, slow)
        wait_until(lambda: patches(sandbox, slow["customerId"]), 20, "the slow event's first call")
        _publish(producer, quick)
        # Then the quick one is applied while the slow one still waits in the broker
        calls = wait_applied(sandbox, quick["customerId"])
        assert [call["status"] for call in calls] == [503, 204]
        assert [call["status"] for call in patches(sandbox, slow["customerId"])] == [429]
        slow_first = patches(sandbox, slow["customerId"])[0]["receivedAt"]
        assert calls[-1]["receivedAt"] - slow_first < 10
