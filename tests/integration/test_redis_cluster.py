"""Issue 18: the ledger on a Redis Cluster (``redis+cluster://``), three primaries started here.

Batches span many hash slots and every primary: each relationship's keys share a slot (hash tag),
each slot gets a script call of its own, and the replies come back in the batch's order.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from tests.integration.conftest import TENANT, WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer
from tests.integration.redis_cluster import RedisCluster
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from worker.events import IdentifierChanged
from worker.exceptions import LedgerUnavailable
from worker.processing.budget import RATE_HEADROOM, RateBudget
from worker.processing.ledger import Hold, Ledger, Relationship, Verdict, order_key
from worker.processing.ledger.client import redis_client
from worker.processing.pause import Pause, PauseStore
from worker.processing.solo_runs import SoloRuns
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.timeout(180)

#: Relationships per batch: enough to land in many slots on every primary.
BATCH = 64
BASE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture
def ledger(cluster: RedisCluster) -> Ledger:
    return Ledger.from_url(cluster.url, prefix=f"ccsync-test-{uuid.uuid4().hex}")


def _event(customer: str, version: int, *, tenant: str = "portal.example.com") -> IdentifierChanged:
    return IdentifierChanged.model_validate(
        {
            "eventId": f"{customer}-v{version}",
            "eventType": "customer.internal-identifier.changed",
            "occurredAt": (BASE + timedelta(seconds=version)).isoformat(),
            "tenant": tenant,
            "customerId": customer,
            "resellerId": None,
            "internalIdentifier": f"V{version}",
        }
    )


def _customers(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def _take(ledger: Ledger, events: list[IdentifierChanged]) -> list[Hold]:
    holds = ledger.try_acquire_all([(Relationship.of(e), e.event_id, None) for e in events])
    assert all(hold is not None for hold in holds)
    return [hold for hold in holds if hold is not None]


def _apply(ledger: Ledger, events: list[IdentifierChanged]) -> list[Verdict]:
    """What a worker does with a batch: take all, judge each, record the new ones, leave all."""
    holds = _take(ledger, events)
    verdicts = [hold.verdict(event) for hold, event in zip(holds, events, strict=True)]
    for hold, event, verdict in zip(holds, events, verdicts, strict=True):
        if verdict is Verdict.NEW:
            hold.applied(event)
    assert ledger.leave_all(holds) == [True] * len(holds)
    return verdicts


def test_given_a_batch_then_each_relationship_keeps_one_slot_and_the_batch_spans_every_primary(
    cluster: RedisCluster, ledger: Ledger
) -> None:
    # Given relationships whose names hold braces, bars and text a hash tag would misread
    tenants = ["portal.example.com", "{odd}|tenant", "}{", "a{b}c"]
    relationships = [
        Relationship(tenants[i % len(tenants)], customer, None)
        for i, customer in enumerate(_customers(BATCH))
    ]
    client = redis_client(cluster.url, timeout=5)
    assert isinstance(client, ClusterClient)

    # Then each one's two keys share a slot, and the batch reaches every primary
    slots = set()
    for relationship in relationships:
        slot = client.keyslot(ledger.lock_key(relationship))
        assert client.keyslot(ledger.applied_key(relationship)) == slot
        slots.add(slot)
    primaries = {client.get_node_from_key(ledger.lock_key(r)).name for r in relationships}
    assert len(slots) > BATCH // 2
    assert len(primaries) == len(cluster.ports)

    # And a batch of them is taken, refused while held, and left, in the batch's order
    events = [_event(r.customer_id, 1, tenant=r.tenant) for r in relationships]
    holds = _take(ledger, events)
    for hold, relationship in zip(holds, relationships, strict=True):
        assert hold.keys == [ledger.lock_key(relationship), ledger.applied_key(relationship)]
    assert ledger.try_acquire_all([(r, "other", None) for r in relationships]) == [None] * BATCH
    assert ledger.fence_all(holds, lease_seconds=5) == [None] * BATCH
    for hold, event in zip(holds, events, strict=True):
        hold.applied(event)
    assert ledger.leave_all(holds) == [True] * BATCH
    assert [ledger.read(r) for r in relationships] == [
        ledger.read(Relationship.of(e)) for e in events
    ]
    assert all(
        (record := ledger.read(Relationship.of(e))) is not None and record.value == "V1"
        for e in events
    )
    client.close()


def test_given_shuffled_batches_then_the_newest_wins_and_duplicates_are_absorbed(
    ledger: Ledger,
) -> None:
    # Given five versions of many customers, each published twice, shuffled into batches
    customers = _customers(BATCH)
    events = [_event(c, v) for c in customers for v in range(5)] * 2
    random.Random(18).shuffle(events)

    # When they are applied batch by batch (one relationship once per batch, as the gate does)
    verdicts: list[Verdict] = []
    pending = events
    while pending:
        batch: list[IdentifierChanged] = []
        later: list[IdentifierChanged] = []
        for event in pending:
            taken = {e.customer_id for e in batch}
            (later if event.customer_id in taken or len(batch) >= 32 else batch).append(event)
        verdicts += _apply(ledger, batch)
        pending = later

    # Then every customer holds its newest version, and each version was new exactly once
    for customer in customers:
        record = ledger.read(Relationship.of(_event(customer, 0)))
        assert record is not None
        assert (record.value, record.order_key) == ("V4", order_key(_event(customer, 4)))
    assert verdicts.count(Verdict.NEW) <= len(customers) * 5
    assert verdicts.count(Verdict.DUPLICATE) + verdicts.count(Verdict.STALE) >= len(events) // 2
    # And a late older event records nothing
    assert _apply(ledger, [_event(customers[0], 2)]) == [Verdict.STALE]
    record = ledger.read(Relationship.of(_event(customers[0], 0)))
    assert record is not None and record.value == "V4"


def test_given_records_on_every_primary_then_records_reads_them_all(ledger: Ledger) -> None:
    # Given records of relationships spread over the cluster, one whose tenant holds braces
    events = [_event(c, 3) for c in _customers(150)] + [_event(str(uuid.uuid4()), 1, tenant="{x}")]
    for start in range(0, len(events), 32):
        _apply(ledger, events[start : start + 32])

    # When verify's enumeration reads them (SCAN on each primary), in small batches
    found = dict(ledger.records(batch=7))

    # Then every one is found once, under its own relationship
    assert found.keys() == {Relationship.of(e) for e in events}
    assert all(
        record.order_key == order_key(e) for e in events for record in [found[Relationship.of(e)]]
    )
    # And one customer's record, and its lock while an event holds it, are read through the tag
    braced = Relationship.of(events[-1])
    assert dict(ledger.records(customer_id=braced.customer_id)) == {braced: found[braced]}
    [hold] = _take(ledger, [events[-1]])
    [(held, lock)] = ledger.locks(customer_id=braced.customer_id)
    assert held == braced and lock.lingering_for is None and lock.remaining_seconds > 0
    assert ledger.leave_all([hold]) == [True]
    assert list(ledger.locks(customer_id=braced.customer_id)) == []


def test_given_primaries_that_forgot_the_scripts_then_a_batch_loads_them_again(
    cluster: RedisCluster, ledger: Ledger
) -> None:
    # Given every primary's script cache flushed (a restart, a promoted replica)
    for port in cluster.ports:
        node = redis.Redis(port=port)
        node.script_flush()
        node.close()

    # When a batch over many slots is applied, then it works as before
    events = [_event(c, 1) for c in _customers(BATCH)]
    assert _apply(ledger, events) == [Verdict.NEW] * BATCH


def test_given_wait_replicas_and_primaries_without_replicas_then_the_ledger_is_unavailable(
    cluster: RedisCluster,
) -> None:
    # Given a ledger whose writes must reach a replica, on a cluster with none
    ledger = Ledger.from_url(cluster.url, prefix=f"ccsync-test-{uuid.uuid4().hex}", wait_replicas=1)

    # Then a batch fails as a Redis failure does (WAIT asked of each primary written to)
    with pytest.raises(LedgerUnavailable, match="reached 0 of 1 replicas"):
        ledger.try_acquire_all([(Relationship.of(_event(c, 1)), "e", None) for c in _customers(8)])


def test_given_a_brace_in_the_prefix_then_a_cluster_ledger_is_refused(
    cluster: RedisCluster,
) -> None:
    with pytest.raises(ValueError, match="without braces"):
        Ledger.from_url(cluster.url, prefix="ccsync{x}")


def _identifiers(sandbox: SandboxControl) -> dict[str, Any]:
    return {c["id"]: c["relationships"].get("self") for c in sandbox.state()}


def test_given_a_worker_on_the_cluster_when_shuffled_versions_arrive_then_the_newest_wins(
    cluster: RedisCluster,
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given 40 customers with 5 versions each, every event published twice, shuffled
    history = {
        customer: [
            native(customer, f"C{c:02d}-V{v}", occurred_at=BASE + timedelta(seconds=v))
            for v in range(5)
        ]
        for c, customer in enumerate(native()["customerId"] for _ in range(40))
    }
    messages = [event for events in history.values() for event in events] * 2
    random.Random(7).shuffle(messages)
    sandbox.configure(latency_ms=5)

    # When a worker whose ledger is the cluster consumes them
    with LocalWorker(own_worker_env(CCSYNC_REDIS_URL=cluster.url), concurrency=16) as worker:
        for event in messages:
            producer.publish(json.dumps(event).encode(), "application/json")
        wait_until(
            lambda: len(final_outcomes(worker)) >= len(messages),
            timeout=90,
            what=f"{len(messages)} final outcomes",
        )
        outcomes = {outcome for _, outcome in final_outcomes(worker)}

    # Then CloudCockpit holds the newest identifier of every customer, and nothing dead-lettered
    final = _identifiers(sandbox)
    for customer, events in history.items():
        assert final[customer] == events[-1]["internalIdentifier"]
    assert "dead-lettered" not in outcomes
    # And the ledger's records are in the cluster, under hash-tagged keys
    ledger = Ledger.from_url(cluster.url)
    records = dict(ledger.records())
    for customer, events in history.items():
        relationship = Relationship(TENANT.lower(), customer, None)
        assert records[relationship].value == events[-1]["internalIdentifier"]


def test_given_the_cluster_then_runs_alone_and_the_pause_use_it(cluster: RedisCluster) -> None:
    # Runs alone: a transaction on one key, counted and cleared
    runs = SoloRuns.from_url(cluster.url, prefix=f"ccsync-test-{uuid.uuid4().hex}")
    assert [runs.begin("message-1"), runs.begin("message-1")] == [0, 1]
    runs.concluded("message-1")
    assert runs.begin("message-1") == 0
    runs.close()
    # The pause: recorded, read back and lifted
    store = PauseStore.from_url(cluster.url, deployment=f"test-{uuid.uuid4().hex}")
    assert store.pause(Pause.now("cluster test")) is None
    assert (paused := store.read()) is not None and paused.reason == "cluster test"
    assert store.resume() is not None and store.read() is None
    store.close()


def test_given_the_cluster_then_the_rate_budget_reserves_and_holds_tenants_in_many_slots(
    cluster: RedisCluster,
) -> None:
    # Given budgets of two workers of one deployment, 10 calls a second per tenant
    deployment = f"test-{uuid.uuid4().hex}"
    first = RateBudget.from_url(cluster.url, per_second=10, deployment=deployment)
    second = RateBudget.from_url(cluster.url, per_second=10, deployment=deployment)
    tenants = [f"tenant-{n}.example.com" for n in range(12)]  # in slots all over the cluster
    # When the first reserves two calls of each tenant in one batch, and the second one more
    reserved = first.reserve_all([tenant for tenant in tenants for _ in range(2)])
    after = second.reserve_all(tenants)
    # Then each tenant's calls are spaced by its own budget, shared by both
    interval = 1 / (10 * RATE_HEADROOM)
    assert all(r.reserved for r in reserved + after)
    for n in range(len(tenants)):
        assert reserved[2 * n + 1].wait_seconds - reserved[2 * n].wait_seconds == pytest.approx(
            interval, abs=0.02
        )
        assert after[n].wait_seconds == pytest.approx(2 * interval, abs=0.05)
    # And without a configured rate, a 429 one worker got holds the tenant for the other
    learning = RateBudget.from_url(cluster.url, per_second=None, deployment=deployment)
    other = RateBudget.from_url(cluster.url, per_second=None, deployment=deployment)
    learning.refused(tenants[0], 2.0)
    other.refresh()
    [held] = other.reserve_all([tenants[0]])
    assert other.applies(tenants[0]) and held.wait_seconds == pytest.approx(2.0, abs=0.2)


def test_given_a_cluster_gone_then_runs_alone_and_the_pause_say_redis_is_unavailable() -> None:
    # Given runs alone and the pause on a cluster of their own, which answered once
    with RedisCluster() as lost:
        runs = SoloRuns.from_url(lost.url, prefix=f"ccsync-test-{uuid.uuid4().hex}")
        store = PauseStore.from_url(lost.url, deployment=f"test-{uuid.uuid4().hex}")
        assert runs.begin("message-1") == 0 and store.read() is None
        # When every node of it is gone (redis-py then raises RedisClusterException, which is
        # no RedisError)
        lost.stop_servers()
        # Then each says the ledger is unavailable, as for any Redis failure: the intake defers
        # the message instead of stopping the worker
        with pytest.raises(LedgerUnavailable):
            runs.begin("message-1")
        with pytest.raises(LedgerUnavailable):
            runs.concluded("message-1")
        with pytest.raises(LedgerUnavailable):
            store.read()
        runs.close()
        store.close()
