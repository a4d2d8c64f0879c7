"""Issue 15, item 1: a relationship's lock holds for the whole call, whatever the latencies.

A brownout at a smaller scale: the lock lives 1 s (``CCSYNC_LOCK_TTL_SECONDS``) instead of 60,
and the calls of one customer take 3 s instead of 25, so each call outlasts the lock's old life,
as a 25 s answer under ``CCSYNC_HTTP_TIMEOUT=90`` outlasts 60 s. Before the fix, the newer event's
lock expired while its call was in flight; the older event then took the lock, found no newer value
in the ledger, and its call landed last.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import later, native
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

#: The lock's life, scaled down from 60 s.
LOCK_TTL_SECONDS = 1
#: How long the slow customer's calls take, scaled down from 25 s: longer than the lock's life.
SLOW_CALL_MS = 3000
#: Every call's latency, so that the events of other customers keep the threads busy.
LATENCY_MS = 100
#: Events of other customers ahead of the slow customer's two.
OTHERS = 200
#: The last of them are slow too: the threads are busy when the newer event's lock is taken, so
#: that lock expires while the event waits for a thread, and the older event takes it.
SLOW_OTHERS = 8


@pytest.mark.timeout(110)
def test_given_a_brownout_when_a_newer_then_an_older_event_arrive_then_the_newer_value_stays(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a brownout: every call is slow, and the calls of one customer (and of the events just
    # ahead of it) outlast the lock's life
    sandbox.configure(latency_ms=LATENCY_MS)
    newer = native(identifier="NEWER")
    customer = newer["customerId"]
    older = native(customer, "OLDER", occurred_at=later(newer, -1))
    sandbox.add_faults(customer, {"delayMs": SLOW_CALL_MS, "times": 10})
    others = [native(identifier=f"OTHER-{i}") for i in range(OTHERS)]
    for other in others[-SLOW_OTHERS:]:
        sandbox.add_faults(other["customerId"], {"delayMs": SLOW_CALL_MS})
    env = own_worker_env(
        CCSYNC_HTTP_TIMEOUT="10",
        CCSYNC_LOCK_TTL_SECONDS=str(LOCK_TTL_SECONDS),
    )

    # When 200 events of other customers are queued ahead of a newer, then an older event
    for event in [*others, newer, older]:
        producer.publish(json.dumps(event).encode(), "application/json")
    with LocalWorker(env, concurrency=4) as worker:
        wait_until(
            lambda: len(final_outcomes(worker)) >= OTHERS + 2,
            timeout=90,
            what=f"{OTHERS + 2} final outcomes",
        )
        outcomes = dict(final_outcomes(worker))

    # Then CloudCockpit ends with the newer value, and the older event was judged stale or, if
    # it went first, was overwritten by the newer one
    state = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    assert state[customer] == "NEWER"
    calls = [e for e in sandbox.journal(customer_id=customer) if e["method"] == "PATCH"]
    last = max(calls, key=lambda call: call["respondedAt"])
    assert last["body"]["internalIdentifier"] == "NEWER"
    assert outcomes[newer["eventId"]] == "applied"
    assert outcomes[older["eventId"]] in ("is stale", "applied")
