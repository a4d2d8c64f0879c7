"""Issue 7, shortened for CI: the chaos run (tests/chaos.py) with 500 events loses nothing."""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos


@pytest.mark.timeout(900)
def test_given_faults_kills_and_restarts_then_every_event_is_accounted_for(
    broker_url: str, redis_url: str
) -> None:
    # Given 500 events, 20% failing calls, a worker killed once, RabbitMQ and Redis restarted
    report = run_chaos(events=500, kills=1)
    for line in report.lines():
        print(f"chaos: {line}")
    # Then every event is applied, skipped as superseded, or dead-lettered with a reason
    assert report.lost == []
    assert report.applied + report.skipped + sum(report.dead_lettered.values()) == 500
    # And every customer holds its newest value that was not dead-lettered
    assert report.wrong_final == []
    assert report.disruptions == ["kill", "rabbitmq", "redis"]
