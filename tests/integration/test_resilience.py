"""Issue 3: poison messages end as delivery-limit; an API outage neither loses nor dead-letters."""

from __future__ import annotations

import json
import threading
import time

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer, queue_depth, read_dead_letters
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import outcome_counts
from worker.constants import DELIVERY_LIMIT, EVENTS_QUEUE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

OUTAGE_SECONDS = 60


def test_given_an_event_that_hangs_the_worker_every_time_then_it_ends_as_delivery_limit(
    own_worker_env: WorkerEnv,
    broker_url: str,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given an event whose call hangs, and a worker that dies each time it holds it
    env = own_worker_env(CCSYNC_HTTP_TIMEOUT="300")
    event = native()
    sandbox.add_faults(event["customerId"], {"delayMs": 120_000, "times": 20})
    producer.publish(json.dumps(event).encode(), "application/json")

    # When the worker is killed with SIGKILL while the call hangs, again and again
    kills = 0
    letters = []
    while not letters and kills <= DELIVERY_LIMIT + 1:
        with LocalWorker(env, concurrency=2) as worker:
            wait_until(
                lambda: queue_depth(broker_url, EVENTS_QUEUE) == 0,
                timeout=30,
                what=f"the worker to take the event after {kills} kills",
            )
            time.sleep(1.0)  # long enough to see the call either hang or be dead-lettered
            if "dead-lettered" in worker.log:
                letters = read_dead_letters(broker_url, expected=1, timeout=10)
                break
            worker.kill()
            kills += 1

    # Then after a bounded number of deliveries it is dead-lettered as delivery-limit
    assert kills == DELIVERY_LIMIT
    [letter] = letters
    assert letter.headers["x-ccsync-reason"] == "delivery-limit"
    assert letter.headers["x-ccsync-event-id"] == event["eventId"]
    assert json.loads(letter.body) == event


def test_given_a_60s_api_outage_then_events_wait_and_are_applied_after_it(
    own_worker_env: WorkerEnv,
    broker_url: str,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a worker whose retries alone (1, 2, 3 s) would not outlast a minute-long outage
    env = own_worker_env()
    events = [native() for _ in range(300)]
    sandbox.configure(latency_ms=20)
    with LocalWorker(env, concurrency=8) as worker:
        stop_publishing = threading.Event()

        def publish_steadily() -> None:
            with_producer = Producer(broker_url)
            try:
                for event in events:
                    if stop_publishing.is_set():
                        return
                    with_producer.publish(json.dumps(event).encode(), "application/json")
                    time.sleep(0.2)
            finally:
                with_producer.close()

        publisher = threading.Thread(target=publish_steadily)
        publisher.start()
        try:
            # When the whole API answers 503 for 60 s while events keep coming
            wait_until(lambda: outcome_counts(worker)["applied"] >= 20, 30, "a first batch")
            sandbox.set_outage({"status": 503})
            time.sleep(OUTAGE_SECONDS)
            sandbox.set_outage(None)
        finally:
            publisher.join(timeout=120)
            stop_publishing.set()

        # Then fewer than 1% are dead-lettered and all the rest are applied
        wait_until(
            lambda: sum(outcome_counts(worker).values()) >= len(events),
            timeout=120,
            what="every event to reach an outcome",
        )
        counts = outcome_counts(worker)
        print(f"outage of {OUTAGE_SECONDS}s: {len(events)} events, outcomes {dict(counts)}")
        assert "outage:" in worker.log and "consumption resumed" in worker.log
    assert counts["dead-lettered"] < len(events) * 0.01
    assert counts["applied"] + counts["dead-lettered"] == len(events)
    final = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    applied = [e for e in events if final.get(e["customerId"]) == e["internalIdentifier"]]
    assert len(applied) == counts["applied"]
