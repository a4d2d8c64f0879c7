"""Issue 26, item 3: a worker killed with calls in flight holds its customers for seconds.

Two workers share the events; one is killed with SIGKILL while every customer's call is in flight
at the API (which answers in 3 s), and a newer event is published for each customer. The worker
left applies every newest value within 30 s, with the default settings, and no customer's older
value lands after its newer one.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.journal import patches
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

#: Customers, shared out between the two workers by the broker: about half are the killed one's.
CUSTOMERS = 80
#: Calls in flight per worker: every customer of each has its call in flight at once.
LANES = 40
#: How long the API takes to answer each call.
LATENCY_MS = 3000
#: The promise: the newest value of every customer applied within this many seconds of the kill.
RECOVERY_SECONDS = 30.0


def _publish(producer: Producer, events: list[dict[str, Any]]) -> None:
    for event in events:
        producer.publish(json.dumps(event).encode(), "application/json")


def _all_arrived(sandbox: SandboxControl, customers: list[str]) -> bool:
    """Each customer's call reached the API: each takes its one scripted step as it arrives (the
    journal records a call only once it is answered)."""
    scripts = sandbox.faults()["scripts"]
    return not any(scripts.get(customer) for customer in customers)


def _applied_values(sandbox: SandboxControl, customer: str) -> list[str]:
    """The values the customer's successful PATCH calls set, in the order they were answered."""
    return [
        call["body"]["internalIdentifier"]
        for call in patches(sandbox, customer)
        if call["status"] == 204
    ]


def test_given_a_worker_killed_with_calls_in_flight_then_the_other_applies_the_newest_soon(
    own_worker_env: WorkerEnv, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given two workers with the default settings, an API answering in 3 s, and one event per
    # customer, each call in flight at one worker or the other
    env = own_worker_env()
    sandbox.configure(latency_ms=LATENCY_MS)
    older_at = datetime.now(UTC) - timedelta(seconds=5)
    older = [native(identifier="older", occurred_at=older_at) for _ in range(CUSTOMERS)]
    customers = [event["customerId"] for event in older]
    for customer in customers:
        sandbox.add_faults(customer, {"delayMs": 1})
    with LocalWorker(env, concurrency=LANES), LocalWorker(env, concurrency=LANES) as doomed:
        _publish(producer, older)
        wait_until(
            lambda: _all_arrived(sandbox, customers), 20, "every call in flight", interval=0.05
        )

        # When one worker is killed with SIGKILL, its calls in flight, and a newer event is
        # published for every customer
        doomed.kill()
        killed_at = time.monotonic()
        _publish(producer, [native(customer, identifier="newer") for customer in customers])

        # Then every customer's newest value is applied within 30 s of the kill
        def newest_everywhere() -> bool:
            return all(
                _applied_values(sandbox, customer)[-1:] == ["newer"] for customer in customers
            )

        wait_until(newest_everywhere, RECOVERY_SECONDS + 30, "every newest value", interval=0.25)
        recovered = time.monotonic() - killed_at
    print(f"every newest value applied {recovered:.1f} s after the kill")
    assert recovered <= RECOVERY_SECONDS, f"the newest values took {recovered:.1f} s"
    # And no older value landed after a newer one
    for customer in customers:
        values = _applied_values(sandbox, customer)
        assert "older" not in values[values.index("newer") :], (customer, values)
