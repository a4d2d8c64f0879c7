"""Issue 15, item 10: a message that kills the worker is the only one charged for it.

The broker raises the delivery count of every message a dead worker had in hand. Events that
merely shared a worker with a poison message must not reach the delivery limit with it.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from tests.integration.conftest import TENANT, WorkerEnv
from tests.integration.events import native
from tests.integration.journal import patches
from tests.integration.producer import Letter, Producer, connect
from tests.integration.waiting import wait_until
from worker.constants import DEAD_LETTER_QUEUE, DELIVERY_LIMIT
from worker.processing.ledger import KEY_PREFIX, Relationship
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

#: The poison's every call hangs this long: the worker is killed while it waits.
POISON_HANG_MS = 60_000
#: Healthy calls are slow enough to be in flight next to the poison's when the worker dies.
HEALTHY_CALL_MS = 400
#: Scripted steps per customer: more than any customer is called in the test.
SCRIPTED_CALLS = 50
#: Healthy events published before the first worker starts.
FIRST_HEALTHY = 4
#: Healthy events published after each kill, first deliveries in hand when the next worker dies.
HEALTHY_PER_KILL = 2


def _publish_healthy(
    producer: Producer, sandbox: SandboxControl, count: int
) -> list[dict[str, Any]]:
    events = [native() for _ in range(count)]
    for event in events:
        sandbox.add_faults(
            event["customerId"], {"delayMs": HEALTHY_CALL_MS, "times": SCRIPTED_CALLS}
        )
        producer.publish(json.dumps(event).encode(), "application/json")
    return events


def _calls_taken(sandbox: SandboxControl, customer_id: str) -> int:
    """Calls the sandbox has started answering for the customer, finished or not: each takes
    one scripted step as it arrives (the journal records a call only once answered)."""
    steps = sandbox.faults()["scripts"].get(customer_id, [])
    return SCRIPTED_CALLS - sum(int(step["times"]) for step in steps)


def _release_locks(redis_url: str, events: list[dict[str, Any]]) -> None:
    """What the leases of a killed worker's calls do once they expire, without waiting for it:
    their relationships are free again for the redelivered events."""
    client = redis.Redis.from_url(redis_url)
    try:
        for event in events:
            relationship = Relationship(TENANT.lower(), event["customerId"], None)
            client.delete(f"{KEY_PREFIX}:lock:{relationship.name}")
    finally:
        client.close()


def _take_dead_letters(broker_url: str) -> list[Letter]:
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        letters = []
        while (message := channel.basic_get(DEAD_LETTER_QUEUE, no_ack=True)) is not None:
            headers = dict(message.properties.get("application_headers") or {})
            letters.append(Letter(bytes(message.body), None, headers))
        return letters
    finally:
        connection.close()


def _applied(sandbox: SandboxControl, event: dict[str, Any]) -> bool:
    calls = patches(sandbox, event["customerId"])
    return bool(calls) and calls[-1]["status"] == 204


def test_given_a_message_that_kills_the_worker_then_only_it_ends_as_delivery_limit(
    own_worker_env: WorkerEnv,
    broker_url: str,
    redis_url: str,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a poison event whose call hangs, published with healthy events of other customers
    env = own_worker_env(CCSYNC_HTTP_TIMEOUT="300")
    poison = native()
    sandbox.add_faults(poison["customerId"], {"delayMs": POISON_HANG_MS, "times": SCRIPTED_CALLS})
    producer.publish(json.dumps(poison).encode(), "application/json")
    healthy = _publish_healthy(producer, sandbox, FIRST_HEALTHY)

    # When the worker is killed with SIGKILL each time the poison's call is in flight, and more
    # healthy events wait for the next worker each time
    for kills in range(DELIVERY_LIMIT):
        with LocalWorker(env, concurrency=8) as worker:
            wait_until(
                lambda: _calls_taken(sandbox, poison["customerId"]) > kills,  # noqa: B023
                timeout=30,
                what=f"the poison's call after {kills} kills",
                interval=0.05,
            )
            worker.kill()
        _release_locks(redis_url, [poison, *healthy])
        healthy += _publish_healthy(producer, sandbox, HEALTHY_PER_KILL)

    # Then the next worker dead-letters the poison alone as delivery-limit, and applies the rest
    letters: list[Letter] = []
    with LocalWorker(env, concurrency=8):

        def settled() -> bool:
            letters.extend(_take_dead_letters(broker_url))
            dead = {letter.headers.get("x-ccsync-event-id") for letter in letters}
            return poison["eventId"] in dead and all(
                event["eventId"] in dead or _applied(sandbox, event) for event in healthy
            )

        wait_until(settled, timeout=40, what="the poison's dead letter and every healthy event")
    assert [
        (letter.headers["x-ccsync-reason"], letter.headers["x-ccsync-event-id"])
        for letter in letters
    ] == [("delivery-limit", poison["eventId"])]
    assert json.loads(letters[0].body) == poison
    assert _calls_taken(sandbox, poison["customerId"]) == DELIVERY_LIMIT
    assert all(_applied(sandbox, event) for event in healthy)
