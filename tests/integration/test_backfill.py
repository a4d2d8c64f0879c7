"""Issue 26, item 1: a backfill lane beside live updates, which it never delays, and live updates
as fast as before, on the real broker, with a real worker and the sandbox answering in 100 ms."""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer, publish_burst, queue_depth
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import outcome_counts
from worker.constants import BACKFILL_QUEUE, BACKFILL_ROUTING_KEY, DEAD_LETTER_QUEUE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

BACKFILL_EVENTS = 15_000
LIVE_EVENTS = 20
LIVE_INTERVAL_SECONDS = 0.25
API_LATENCY_MS = 100
#: Calls in flight: the sandbox, in this test's process, answers about that many in 100 ms.
WORKER_CONCURRENCY = 64


def identifiers(sandbox: SandboxControl) -> dict[str, Any]:
    return {c["id"]: c["relationships"].get("self") for c in sandbox.state()}


def test_given_a_15000_event_backfill_when_live_events_arrive_then_each_is_called_within_1_s(
    own_worker_env: WorkerEnv, broker_url: str, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given a worker, an API answering in 100 ms and 15,000 events on the backfill lane
    sandbox.configure(latency_ms=API_LATENCY_MS)
    backfill = [native(identifier=f"BULK-{n}") for n in range(BACKFILL_EVENTS)]
    with LocalWorker(own_worker_env(), concurrency=WORKER_CONCURRENCY) as worker:
        publish_burst(broker_url, backfill, BACKFILL_ROUTING_KEY)

        # When 20 live events are published, one every 250 ms, while the backfill drains
        published: dict[str, float] = {}
        for number in range(LIVE_EVENTS):
            event = native(identifier=f"LIVE-{number}")
            published[event["customerId"]] = time.time()
            producer.publish(json.dumps(event).encode(), "application/json")
            time.sleep(LIVE_INTERVAL_SECONDS)
        backlog_behind_live = queue_depth(broker_url, BACKFILL_QUEUE)

        # Then each live event is called within a second of its publishing
        delays = []
        for customer, at in published.items():
            calls = wait_until(
                lambda customer=customer: sandbox.journal(customer_id=customer),
                timeout=30,
                what=f"the call of live customer {customer}",
            )
            delays.append(calls[0]["receivedAt"] - at)
        p99 = statistics.quantiles(delays, n=100)[98]
        print(f"live publish-to-call: p50 {statistics.median(delays):.3f}s, p99 {p99:.3f}s")
        assert backlog_behind_live > 0, "the backfill had drained before the live events ended"
        assert p99 <= 1.0, sorted(delays)

        # And the backfill completes: every bulk event applied, nothing dead-lettered
        wait_until(
            lambda: outcome_counts(worker)["applied"] >= BACKFILL_EVENTS + LIVE_EVENTS,
            timeout=400,
            what="the whole backfill applied",
            interval=5,
        )
        wanted = {event["customerId"]: event["internalIdentifier"] for event in backfill}
        assert {c: v for c, v in identifiers(sandbox).items() if c in wanted} == wanted
        assert queue_depth(broker_url, DEAD_LETTER_QUEUE) == 0
        assert worker.alive


def test_given_one_customer_on_both_lanes_then_the_newest_value_wins_whichever_lane_it_took(
    own_worker_env: WorkerEnv, broker_url: str, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given two customers, each with an older and a newer event, the newer on the other lane
    base = datetime.now(UTC) - timedelta(minutes=5)
    newer = base + timedelta(minutes=1)
    newer_on_backfill, newer_live = native()["customerId"], native()["customerId"]
    with LocalWorker(own_worker_env()) as worker:
        # When the newer event of each is applied first, and the older arrives after it
        publish_burst(
            broker_url,
            [native(newer_on_backfill, "BULK-NEW", occurred_at=newer)],
            BACKFILL_ROUTING_KEY,
        )
        producer.publish(json.dumps(native(newer_live, "LIVE-NEW", occurred_at=newer)).encode())
        wait_until(
            lambda: (
                identifiers(sandbox).get(newer_on_backfill) == "BULK-NEW"
                and identifiers(sandbox).get(newer_live) == "LIVE-NEW"
            ),
            timeout=30,
            what="both newer values applied",
        )
        producer.publish(
            json.dumps(native(newer_on_backfill, "LIVE-OLD", occurred_at=base)).encode()
        )
        publish_burst(
            broker_url, [native(newer_live, "BULK-OLD", occurred_at=base)], BACKFILL_ROUTING_KEY
        )
        wait_until(
            lambda: "is stale" in worker.log and worker.log.count("is stale") >= 2,
            timeout=30,
            what="both older events judged stale",
        )

    # Then each customer keeps its newest value: an older event on either lane changes nothing
    assert identifiers(sandbox)[newer_on_backfill] == "BULK-NEW"
    assert identifiers(sandbox)[newer_live] == "LIVE-NEW"


STEADY_EVENTS_PER_SECOND = 150
STEADY_SECONDS = 10
#: Seconds at the start not measured: the lanes open their connections and the token is fetched.
WARM_UP_SECONDS = 1


def test_given_a_steady_150_events_a_second_then_each_is_called_within_50_ms_p99(
    own_worker_env: WorkerEnv, sandbox: SandboxControl, producer: Producer
) -> None:
    # Given a worker and an API answering in 100 ms
    sandbox.configure(latency_ms=API_LATENCY_MS)
    with LocalWorker(own_worker_env(), concurrency=WORKER_CONCURRENCY) as worker:
        # When live events arrive steadily, 150 a second for 10 s
        published: dict[str, float] = {}
        interval = 1 / STEADY_EVENTS_PER_SECOND
        started = time.monotonic()
        for number in range(STEADY_EVENTS_PER_SECOND * STEADY_SECONDS):
            time.sleep(max(0.0, started + number * interval - time.monotonic()))
            event = native(identifier=f"STEADY-{number}")
            published[event["customerId"]] = time.time()
            producer.publish(json.dumps(event).encode(), "application/json")
        wait_until(
            lambda: outcome_counts(worker)["applied"] >= len(published),
            timeout=60,
            what="every steady event applied",
        )

    # Then, once warm, each was called within 50 ms of its publishing, at the 99th percentile
    measured = list(published)[STEADY_EVENTS_PER_SECOND * WARM_UP_SECONDS :]
    called = {}
    for entry in sandbox.journal():
        customer = entry["customerId"]
        if entry["method"] == "PATCH" and customer in published and customer not in called:
            called[customer] = entry["receivedAt"]
    delays = [called[customer] - published[customer] for customer in measured]
    p99 = statistics.quantiles(delays, n=100)[98]
    p50 = statistics.median(delays)
    print(f"steady publish-to-call: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 <= 0.050, f"p99 {p99 * 1000:.1f} ms"
