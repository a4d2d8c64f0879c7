"""The operators' tools fail over as the worker does: the first broker of a three-node cluster
killed, ``ccsync dlq keep``, ``ccsync dlq replay`` and the console carry on with the others (and
``dlq list`` reads the store, which needs no broker)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.console_support import console_settings, log_in, serving
from tests.integration.rabbitmq_cluster import RabbitCluster
from tests.integration.test_dlq_support import (
    ccsync,
    fresh_queues,
    json_lines,
    put_dead_letters,
    seed_for_event,
    wait_for,
)
from worker.constants import DEAD_LETTER_QUEUE, EVENTS_QUEUE

pytestmark = pytest.mark.usefixtures("clean_environment")

#: Seconds the surviving nodes may take to elect new leaders for the queues the first one led.
LEADER_ELECTION_TIMEOUT = 60.0
#: Seconds the broker may take to count the messages of its quorum queues anew.
QUEUE_STATISTICS_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with RabbitCluster() as started:
        yield started


def test_dlq_list_replay_and_the_console_work_with_the_first_broker_killed(
    cluster: RabbitCluster,
) -> None:
    # Given three dead letters in a three-node cluster
    urls = cluster.urls()
    fresh_queues(urls)
    seeds = [seed_for_event("retries-exhausted", status=503) for _ in range(3)]
    put_dead_letters(urls, seeds)
    expected = sorted(str(seed.event_id) for seed in seeds)
    # And the first broker of CCSYNC_BROKER_URL killed
    first = cluster.nodes[0]
    first.kill()
    for queue in (DEAD_LETTER_QUEUE, EVENTS_QUEUE):
        wait_for(
            lambda queue=queue: cluster.leader(queue) is not first,
            timeout=LEADER_ELECTION_TIMEOUT,
            what=f"a new leader of {queue}",
        )
    # When the keeper takes them in, and an operator lists them
    kept = ccsync(urls, "dlq", "keep", "--once")
    assert kept.exit_code == 0, kept.output
    assert "stored 3 new dead letter(s)" in kept.output
    listed = ccsync(urls, "dlq", "list", "--json")
    # Then they were taken from a surviving broker, and are listed
    assert listed.exit_code == 0, listed.output
    assert sorted(line["eventId"] for line in json_lines(listed)) == expected
    # And the console shows them too
    with (
        serving(console_settings(urls)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert log_in(client).status_code == 303
        stats = client.get("/api/stats")
        assert stats.status_code == 200, stats.text
        assert sum(group["count"] for group in stats.json()["groups"]) == len(seeds)
    # When the operator replays them
    replayed = ccsync(urls, "dlq", "replay", "--yes")
    # Then every one went back to ccsync.events and left the dead-letter queue
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 3 of 3" in replayed.output
    # (a quorum queue's statistics lag by a few seconds)
    wait_for(
        lambda: (
            (cluster.messages()[EVENTS_QUEUE], cluster.messages()[DEAD_LETTER_QUEUE])
            == (len(seeds), 0)
        ),
        timeout=QUEUE_STATISTICS_TIMEOUT,
        what="three events in ccsync.events and none in ccsync.dead-letter",
    )
