"""Issue 2 and 3: killing the worker loses nothing, whether an event waits or is in flight."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.conftest import worker_env
from tests.integration.events import native
from tests.integration.journal import patches, wait_applied
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.local import LocalWorker
from worker.sandbox import SandboxControl, SandboxServer


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
