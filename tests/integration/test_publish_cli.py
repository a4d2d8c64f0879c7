"""``ccsync publish``: events go out as a producer's would, and never into the void."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT, rabbitmqctl
from tests.integration.producer import connect, queue_depth
from worker.constants import BACKFILL_QUEUE, EVENTS_QUEUE


@pytest.fixture
def empty_vhost() -> Iterator[str]:
    vhost = f"ccsync-empty-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


def _ccsync(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={"CCSYNC_BROKER_URL": broker_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_given_no_worker_ever_ran_then_publish_fails_instead_of_dropping_the_event(
    empty_vhost: str,
) -> None:
    customer = str(uuid.uuid4())
    result = _ccsync(empty_vhost, "publish", "--customer", customer, "--identifier", "X")
    assert result.returncode == 1
    assert "no queue is bound to customer-events" in result.stderr


def test_given_the_topology_then_publish_from_a_json_lines_file_queues_each_event(
    empty_vhost: str, tmp_path: Path
) -> None:
    assert _ccsync(empty_vhost, "topology", "--apply").returncode == 0
    lines = [
        {
            "eventId": f"e-{n}",
            "eventType": "customer.internal-identifier.changed",
            "occurredAt": "2026-01-01T00:00:00Z",
            "customerId": str(uuid.uuid4()),
            "internalIdentifier": f"F-{n}",
        }
        for n in range(3)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    result = _ccsync(
        empty_vhost, "publish", "--file", str(path), "--encoding", "cloudevents-binary"
    )
    assert result.returncode == 0, result.stderr
    assert "published 3 event(s)" in result.stdout
    assert queue_depth(empty_vhost, EVENTS_QUEUE) == 3
    channel = connect(empty_vhost).channel()
    message = channel.basic_get(EVENTS_QUEUE, no_ack=True)
    assert message.properties["application_headers"]["cloudEvents:id"] == "e-0"
    assert json.loads(message.body)["internalIdentifier"] == "F-0"
    channel.connection.close()


def test_given_backfill_then_publish_queues_the_event_on_the_backfill_lane(
    empty_vhost: str,
) -> None:
    # Given the topology, and no worker consuming
    assert _ccsync(empty_vhost, "topology", "--apply").returncode == 0

    # When an event is published with --backfill
    customer = str(uuid.uuid4())
    result = _ccsync(
        empty_vhost, "publish", "--customer", customer, "--identifier", "BULK", "--backfill"
    )

    # Then it waits on ccsync.backfill, not on the live lane
    assert result.returncode == 0, result.stderr
    assert queue_depth(empty_vhost, BACKFILL_QUEUE) == 1
    assert queue_depth(empty_vhost, EVENTS_QUEUE) == 0
