"""The functions behind ``ccsync dlq``, called directly: limit, rate, what counts as published."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Exchange

from tests.integration.test_dlq_support import (
    dead_letters,
    fresh_queues,
    put_dead_letters,
    replayed_depth,
    seed_for_event,
    store_dead_letters,
    stored,
    take_replayed,
    this_tests_store,
)
from worker.constants import EVENTS_QUEUE
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.reading import hold
from worker.dead_letter_queue.stats import group_stats
from worker.dead_letter_queue.stored_replay import replay_stored
from worker.processing.dead_letters import Envelope


@pytest.mark.usefixtures("clean_environment")  # the dead-letter store in the test's directory
def test_replay_limit_and_rate(broker_url: str) -> None:
    # Given 30 dead letters in the store, every third one api-rejected
    fresh_queues(broker_url)
    seeds = [
        seed_for_event("api-rejected" if i % 3 == 0 else "retries-exhausted", status=503)
        for i in range(30)
    ]
    store_dead_letters(broker_url, seeds)
    examined: list[int] = []
    # When 15 retries-exhausted ones are replayed at 50 per second
    with Connection(broker_url) as connection, this_tests_store() as store:
        report = replay_stored(
            store,
            connection,
            DeadLetterFilter.build(reasons=["retries-exhausted"]),
            who="tests",
            limit=15,
            rate=50,
            on_examined=examined.append,
        )
    # Then exactly the first 15 of them went, no faster than asked
    chosen = [s.event_id for s in seeds if s.letter.reason == "retries-exhausted"][:15]
    assert (report.matched, report.replayed, report.failed) == (15, 15, 0)
    assert report.event_ids == chosen
    assert report.seconds >= 14 / 50
    assert report.rate <= 55
    # And the query looked at no more dead letters than it needed
    assert sum(examined) == report.examined == 15
    assert [e.event_id for e in take_replayed(broker_url)] == chosen
    # And the other 15 are still waiting, the oldest first
    assert [r.event_id for r in stored()] == [
        s.event_id for s in seeds if s.event_id not in set(chosen)
    ]


def test_an_unroutable_publish_counts_as_failed_not_confirmed(broker_url: str) -> None:
    # Given an exchange no queue is bound to (the broker confirms such messages all the same)
    name = f"dlq-test-nowhere-{uuid.uuid4().hex[:8]}"
    with Connection(broker_url) as connection:
        channel = connection.channel()
        Exchange(name, type="direct", auto_delete=False)(channel).declare()
        confirms: ConfirmWindow[str] = ConfirmWindow(connection)
        # When a message is published there, and one to a queue that exists
        confirms.publish(
            "nowhere", Envelope(b"{}", "application/json", None), exchange=name, routing_key="x"
        )
        unroutable = confirms.settle()
        fresh_queues(broker_url)
        confirms.publish(
            "queued", Envelope(b"{}", None, None), exchange="", routing_key=EVENTS_QUEUE
        )
        routed = confirms.settle()
        confirms.close()
        channel.exchange_delete(name)
        channel.close()
    # Then only the routed one is reported as safe
    assert unroutable == ([], ["nowhere"])
    assert routed == (["queued"], [])
    assert replayed_depth(broker_url) == 1


def test_stats_and_browsing_leave_every_dead_letter_in_place(broker_url: str) -> None:
    fresh_queues(broker_url)
    put_dead_letters(broker_url, [seed_for_event("api-rejected", status=404) for _ in range(5)])
    with Connection(broker_url) as connection:
        with hold(connection) as held:
            (group,) = group_stats(held.records)
        with hold(connection) as held:
            first = next(held.records)
            assert held.total == 5 and first.reason == "api-rejected"
    assert group.count == 5
    assert len(dead_letters(broker_url)) == 5
