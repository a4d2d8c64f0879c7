"""Issue 15, item 2: a gateway's 502, 503 or 504 does not prove the change was not applied.

The backend behind the gateway may still apply the call after the gateway gave up, so the
relationship stays held for ``CCSYNC_UNANSWERED_HOLD_SECONDS``, as after a read timeout: a newer
event queued right after waits until the hold has passed, and a late write cannot land after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.conftest import worker_env
from tests.integration.events import later, native
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

#: Short enough for a test, long enough to tell apart from the busy pause and the first retry.
HOLD_SECONDS = 4.0
#: What the hold may fall short by: the journal's clock against the worker's, rounding.
SLACK_SECONDS = 0.3


@pytest.fixture(scope="module")
def held_worker(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer
) -> Iterator[LocalWorker]:
    env = worker_env(
        broker_url,
        sandbox_server.url,
        redis_url,
        CCSYNC_UNANSWERED_HOLD_SECONDS=str(HOLD_SECONDS),
    )
    with LocalWorker(env, concurrency=4) as process:
        yield process


@pytest.mark.parametrize("status", [502, 503, 504])
def test_given_a_gateway_error_when_a_newer_event_follows_then_it_waits_out_the_hold(
    status: int, held_worker: LocalWorker, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given an older event whose call a gateway answers with a 5xx
    older = native(identifier="OLDER")
    customer = older["customerId"]
    newer = native(customer, "NEWER", occurred_at=later(older, 1))
    sandbox.add_faults(customer, {"status": status})
    producer.publish(json.dumps(older).encode(), "application/json")

    def failed_call() -> float | None:
        for entry in sandbox.journal(customer_id=customer):
            if entry["method"] == "PATCH" and entry["status"] == status:
                return entry["respondedAt"]
        return None

    failed_at = wait_until(failed_call, 30, f"the older call to be answered {status}")

    # When a newer event of the same customer is queued right after
    producer.publish(json.dumps(newer).encode(), "application/json")
    wait_until(
        lambda: (newer["eventId"], "applied") in final_outcomes(held_worker),
        timeout=60,
        what="the newer event to be applied",
    )

    # Then its call waited until the hold had passed, and the newer value is the one kept
    calls = [e for e in sandbox.journal(customer_id=customer) if e["method"] == "PATCH"]
    newest = next(c for c in calls if c["body"]["internalIdentifier"] == "NEWER")
    assert newest["receivedAt"] - failed_at >= HOLD_SECONDS - SLACK_SECONDS
    assert all(
        c["receivedAt"] < newest["receivedAt"]
        for c in calls
        if c["body"]["internalIdentifier"] == "OLDER"
    )
    state = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    assert state[customer] == "NEWER"
