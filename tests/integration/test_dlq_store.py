"""The dead-letter store and its keeper, on SQLite and on PostgreSQL (issue 28).

The keeper moves dead letters from the queue into the store, acking each only once committed;
operators read, replay and purge from the store, never from the queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from kombu import Connection

from tests.integration.store_databases import store_database
from tests.integration.test_dlq_support import (
    depth,
    fresh_queues,
    seed_for_event,
    take_replayed,
    wait_for,
)
from worker.amqp.topology import declare_topology
from worker.constants import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.keeper import Keeper, KeeperReport
from worker.dead_letter_queue.reading import DeadLetterRecord, hold
from worker.dead_letter_queue.store import (
    PURGED,
    REPLAYED,
    WAITING,
    DeadLetterStore,
    letters,
)
from worker.dead_letter_queue.stored_replay import purge_stored, replay_stored

pytestmark = pytest.mark.usefixtures("clean_environment")

RETENTION = timedelta(days=14)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[DeadLetterStore]:
    with DeadLetterStore(store_url) as opened:
        yield opened


def put_exactly(broker_url: str, records: Sequence[DeadLetterRecord]) -> None:
    """Publishes the dead letters as they are, properties included (as the worker does): the
    same record twice is the same dead letter delivered twice."""
    with Connection(broker_url) as connection:
        declare_topology(connection)
        confirms: ConfirmWindow[int] = ConfirmWindow(connection)
        try:
            for record in records:
                confirms.publish(
                    0,
                    record.envelope(),
                    exchange=DEAD_LETTER_EXCHANGE,
                    routing_key=DEAD_LETTER_QUEUE,
                    properties=record.properties,
                )
                if confirms.pending >= 500:
                    assert not confirms.settle()[1]
            assert not confirms.settle()[1]
        finally:
            confirms.close()


def keep_until_empty(broker_url: str, store: DeadLetterStore) -> KeeperReport:
    with Connection(broker_url) as connection:
        return Keeper(connection, store, retention=RETENTION).run(lambda: False, until_empty=True)


def records(
    count: int, reason: str = "retries-exhausted", **kwargs: object
) -> list[DeadLetterRecord]:
    return [seed_for_event(reason, **kwargs).record() for _ in range(count)]  # type: ignore[arg-type]


def test_the_keeper_stores_each_dead_letter_once_and_empties_the_queue(
    broker_url: str, store: DeadLetterStore
) -> None:
    # Given 30 dead letters in the queue
    fresh_queues(broker_url)
    seeded = records(30, "api-rejected", status=404)
    put_exactly(broker_url, seeded)
    # When the keeper runs
    report = keep_until_empty(broker_url, store)
    # Then every one is in the store, byte for byte, and none is left in the queue
    assert (report.received, report.stored) == (30, 30)
    assert depth(broker_url, DEAD_LETTER_QUEUE) == 0
    page = store.page(DeadLetterFilter(), size=100)
    assert page.total == 30
    assert sorted(letter.record.body for letter in page.letters) == sorted(r.body for r in seeded)
    # And the same dead letters delivered again (a keeper killed before its ack) add nothing
    put_exactly(broker_url, seeded)
    again = keep_until_empty(broker_url, store)
    assert (again.received, again.stored) == (30, 0)
    assert store.count() == 30


def test_a_keeper_killed_mid_batch_loses_and_duplicates_nothing(
    broker_url: str, store_url: str, store: DeadLetterStore
) -> None:
    # Given 4,000 dead letters in the queue, and a keeper process moving them
    fresh_queues(broker_url)
    seeded = records(4000)
    put_exactly(broker_url, seeded)
    env = {**os.environ, "CCSYNC_BROKER_URL": broker_url, "CCSYNC_DLQ_STORE_URL": store_url}
    keeper = subprocess.Popen(
        [sys.executable, "-m", "worker", "dlq", "keep"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # When it is SIGKILLed once some are stored, with a batch in its hands
        wait_for(lambda: _stored(store) > 0, timeout=60, what="the keeper's first batch")
    finally:
        keeper.send_signal(signal.SIGKILL)
        keeper.wait(timeout=30)
    assert _stored(store) < 4000, "the keeper finished before it was killed: kill it earlier"
    # And a keeper runs again
    keep_until_empty(broker_url, store)
    # Then every dead letter is stored exactly once and the queue is empty
    assert store.count() == 4000
    stored_ids = {letter.record.event_id for letter in store.matching(DeadLetterFilter())}
    assert stored_ids == {record.event_id for record in seeded}
    assert depth(broker_url, DEAD_LETTER_QUEUE) == 0


def _stored(store: DeadLetterStore) -> int:
    return store.count()


def test_an_unreachable_store_leaves_dead_letters_in_the_queue_until_it_is_back(
    broker_url: str,
) -> None:
    # Given a keeper whose PostgreSQL database does not exist yet
    fresh_queues(broker_url)
    put_exactly(broker_url, records(20))
    later = f"ccsync_test_later_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    stop = threading.Event()
    with (
        DeadLetterStore(f"postgresql+psycopg:///{later}") as store,
        Connection(broker_url) as connection,
    ):
        keeper = Keeper(connection, store, retention=RETENTION)
        running = threading.Thread(target=keeper.run, args=(stop.is_set,), daemon=True)
        running.start()
        try:
            # When it has tried for a while
            wait_for(lambda: keeper.report.store_down >= 1, what="a try on the missing store")
            # Then the dead letters wait in the queue, every one
            assert keeper.report.received == 0
            with Connection(broker_url) as reading, hold(reading) as held:
                assert held.total == 20
            # And once the store is there they arrive, and the queue empties
            subprocess.run(["createdb", later], check=True, timeout=60)
            try:
                wait_for(lambda: _count_or_zero(store) == 20, timeout=30, what="20 stored")
                wait_for(lambda: keeper.report.received == 20, what="20 acked")
            finally:
                stop.set()
                running.join(timeout=30)
                store.close()
                subprocess.run(["dropdb", "--force", later], check=True, timeout=60)
        finally:
            stop.set()
            running.join(timeout=30)
    assert depth(broker_url, DEAD_LETTER_QUEUE) == 0


def _count_or_zero(store: DeadLetterStore) -> int:
    try:
        return store.count()
    except Exception:
        return 0


def test_two_concurrent_replays_of_one_group_replay_each_dead_letter_once(
    broker_url: str, store_url: str, store: DeadLetterStore
) -> None:
    # Given 300 waiting dead letters of one group in the store
    fresh_queues(broker_url)
    seeded = records(300)
    store.add(seeded)
    group = DeadLetterFilter.build(reasons=["retries-exhausted"])
    reports = []
    lock = threading.Lock()

    def replay_as(operator: str) -> None:
        with DeadLetterStore(store_url) as own, Connection(broker_url) as connection:
            report = replay_stored(own, connection, group, who=operator)
        with lock:
            reports.append(report)

    # When two operators replay the group at the same time
    threads = [threading.Thread(target=replay_as, args=(who,)) for who in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    # Then each dead letter was published once, and is marked replayed
    assert sum(report.replayed for report in reports) == 300
    published = [taken.event_id for taken in take_replayed(broker_url)]
    assert sorted(published) == sorted(str(record.event_id) for record in seeded)
    assert store.count(states=(REPLAYED,)) == 300
    assert store.count() == 0


def test_a_dry_run_then_at_once_an_edit_and_replay_finds_the_dead_letter(
    broker_url: str, store: DeadLetterStore
) -> None:
    # Given 31 dead letters the API rejected, moved into the store
    fresh_queues(broker_url)
    seeded = records(31, "api-rejected", status=400, error="HTTP 400; BadRequest; bad id")
    put_exactly(broker_url, seeded)
    keep_until_empty(broker_url, store)
    rejected = DeadLetterFilter.build(reasons=["api-rejected"])
    with Connection(broker_url) as connection:
        # When an operator runs a dry run, and at once edits and replays one of them
        dry = replay_stored(store, connection, rejected, who="ann", dry_run=True)
        one = DeadLetterFilter.build(event_ids=[str(seeded[7].event_id)])
        edited = replay_stored(
            store, connection, one, who="ann", edits={"internalIdentifier": "ID-FIXED"}
        )
    # Then the dry run saw all 31 and the replay found the one it named
    assert dry.matched == 31
    assert edited.replayed == 1
    (published,) = take_replayed(broker_url)
    assert published.event_id == seeded[7].event_id
    assert b'"ID-FIXED"' in published.body
    # And its history says who replayed it, in which job
    letter = next(store.matching(one, states=(REPLAYED,)))
    rows, entries = store.history(letter)
    assert [row.id for row in rows] == [letter.id]
    assert [(entry.action, entry.who) for entry in entries] == [("replay", "ann")]
    assert entries[0].outcome.startswith("published")


def test_retention_deletes_only_what_is_past_it(store: DeadLetterStore) -> None:
    # Given a dead letter replayed 15 days ago, one purged 13 days ago, one waiting for 30 days
    old_replayed, recent_purged, old_waiting, fresh_replayed = records(4)
    store.add([old_replayed, recent_purged, old_waiting, fresh_replayed])
    ids = {letter.record.event_id: letter.id for letter in store.matching(DeadLetterFilter())}
    for record in (old_replayed, fresh_replayed):
        letter_id = ids[record.event_id]
        store.claim([letter_id], who="ann", job=f"job-{record.event_id}")
        store.settle_replays(
            confirmed=[letter_id], failed=[], who="ann", job=f"job-{record.event_id}"
        )
    purge_stored(store, DeadLetterFilter.build(event_ids=[str(recent_purged.event_id)]), who="bob")
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.engine.begin() as connection:
        for record, age in ((old_replayed, 15), (recent_purged, 13)):
            connection.execute(
                letters.update()
                .where(letters.c.id == ids[record.event_id])
                .values(settled_at=now - timedelta(days=age))
            )
        connection.execute(
            letters.update()
            .where(letters.c.id == ids[old_waiting.event_id])
            .values(dead_lettered_at=now - timedelta(days=30))
        )
    # When the keeper's retention of 14 days runs
    deleted = store.expire(retention=RETENTION)
    # Then only the one replayed 15 days ago is gone, with its history
    assert deleted == 1
    left = {
        letter.record.event_id: letter.state
        for letter in store.matching(DeadLetterFilter(), states=(WAITING, REPLAYED, PURGED))
    }
    assert left == {
        recent_purged.event_id: PURGED,
        old_waiting.event_id: WAITING,
        fresh_replayed.event_id: REPLAYED,
    }
    with store.engine.connect() as connection:
        histories = connection.execute(sa.text("SELECT COUNT(*) FROM dead_letter_history"))
        assert histories.scalar_one() == 2  # the fresh replay and the purge


def test_filters_and_stats_are_queries(store: DeadLetterStore) -> None:
    # Given dead letters of two groups and two tenants, one of them without a tenant
    store.add(records(3, "api-rejected", status=404, error="HTTP 404; NotFound; gone"))
    store.add(records(2, "retries-exhausted", status=503))
    store.add(records(1, "retries-exhausted", status=503, tenant="Other.Example"))
    store.add(records(1, "retries-exhausted", status=503, tenant=None))
    # When grouped, and filtered by tenant (case aside, the tenant-less by correlation id)
    stats = store.stats(DeadLetterFilter())
    by_tenant = store.page(DeadLetterFilter.build(tenants=["tests.example"]))
    # Then
    assert [(g.reason, g.status, g.error_type, g.count) for g in stats] == [
        ("retries-exhausted", 503, "ServiceUnavailable", 4),
        ("api-rejected", 404, "NotFound", 3),
    ]
    assert by_tenant.total == 6
    assert len(store.page(DeadLetterFilter(), size=4, number=2).letters) == 3
