"""Issue 18, shortened for CI: the cluster run (tests/cluster.py) with 500 events: three RabbitMQ
nodes, Redis with Sentinel, three workers; the leader node, the Redis primary and a worker killed.
It starts its own servers on free ports and leaves the machine's RabbitMQ and Redis alone."""

from __future__ import annotations

import pytest

from tests.cluster import run_cluster


@pytest.mark.timeout(900)
def test_given_a_cluster_losing_nodes_then_nothing_is_lost_and_the_newest_value_wins() -> None:
    # Given 500 events (five versions per customer, shuffled, each published twice) through a
    # three-node cluster whose leader node, Redis primary and one worker are killed mid-run
    report = run_cluster(events=500, rate=40)
    for line in report.lines():
        print(f"cluster: {line}")
    # Then every event is applied, skipped as superseded or duplicate, or dead-lettered
    assert report.lost == []
    assert report.applied + report.skipped + sum(report.dead_lettered.values()) == 500
    # And every customer holds its newest value
    assert report.newest == report.customers
    # And every event CloudCockpit accepted twice was first applied right before a disruption
    assert report.unexplained_doubles == []
    # And a dead letter made before the leader node was killed is still listed and replayable
    assert report.early_dead_letter_listed
    assert report.early_dead_letter_replayed
    assert len(report.disruptions) == 4
