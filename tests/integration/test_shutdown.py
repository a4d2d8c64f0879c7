"""Issue 7: SIGTERM finishes the calls in flight, acknowledges them, and exits in bounded time."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer, queue_depth
from tests.integration.waiting import wait_until
from worker.constants import EVENTS_QUEUE, TASKS_QUEUE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

LATENCY_MS = 2000
IN_FLIGHT = 4
EXIT_BOUND_SECONDS = 30


def _patches(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return [dict(entry) for entry in sandbox.journal() if entry["method"] == "PATCH"]


@pytest.mark.timeout(180)
def test_given_calls_in_flight_when_sigterm_then_they_finish_are_acked_and_the_worker_exits(
    own_worker_env: WorkerEnv,
    broker_url: str,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a worker that holds a token already (the token endpoint is slow too)
    env = own_worker_env(CCSYNC_LOG_FORMAT="json")
    first = LocalWorker(env, concurrency=8).start()
    try:
        warm_up = native(identifier="WARM-UP")
        producer.publish(json.dumps(warm_up).encode(), "application/json")
        wait_until(lambda: _patches(sandbox), timeout=30, what="the warm-up event")
        sandbox.clear_journal()

        # And a CloudCockpit that takes 2 s per call, and four events whose calls are under way
        sandbox.configure(latency_ms=LATENCY_MS)
        events = [native(identifier=f"SHUTDOWN-{n}") for n in range(IN_FLIGHT)]
        for event in events:
            producer.publish(json.dumps(event).encode(), "application/json")
        time.sleep(LATENCY_MS / 2000)  # the calls are sent in milliseconds, answered after 2 s
        assert _patches(sandbox) == [], "no call may be answered yet: they are in flight"

        # When the worker gets SIGTERM
        signalled_at = time.time()
        started = time.monotonic()
        exit_status = first.stop(timeout=EXIT_BOUND_SECONDS + 30)
        seconds = time.monotonic() - started
    finally:
        first.stop()
    print(f"\nshutdown: SIGTERM to exit took {seconds:.2f}s with {IN_FLIGHT} calls in flight")

    # Then it exited by itself (not killed), within the bound, after the calls in flight
    assert exit_status == 0, f"exit status {exit_status}; log:\n{first.log[-3000:]}"
    assert seconds < EXIT_BOUND_SECONDS
    patches = _patches(sandbox)
    assert sorted(p["customerId"] for p in patches) == sorted(e["customerId"] for e in events)
    sent = [round(p["receivedAt"] - signalled_at, 3) for p in patches]
    assert all(delta < 0 for delta in sent), f"sent before SIGTERM? seconds from SIGTERM: {sent}"
    assert all(p["status"] == 204 for p in patches)
    final = {c["id"]: c["relationships"] for c in sandbox.state()}
    for event in events:
        assert final[event["customerId"]] == {"self": event["internalIdentifier"]}

    # And every message was acknowledged: nothing went back to a queue
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0
    assert queue_depth(broker_url, TASKS_QUEUE) == 0

    # And a new worker finds nothing to redo: still exactly one PATCH per event
    sandbox.configure(latency_ms=0)
    with LocalWorker(env, concurrency=8) as second:
        canary = native(identifier="AFTER-RESTART")
        producer.publish(json.dumps(canary).encode(), "application/json")
        wait_until(
            lambda: any(c["id"] == canary["customerId"] for c in sandbox.state()),
            timeout=30,
            what="an event published after the restart",
        )
    per_event = [
        sum(1 for p in _patches(sandbox) if p["customerId"] == event["customerId"])
        for event in events
    ]
    assert per_event == [1] * IN_FLIGHT
    redone = [e["eventId"] for e in events if e["eventId"] in second.log]
    assert not redone, f"the new worker saw events the first had settled: {redone}"
