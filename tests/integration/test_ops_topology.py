"""``ccsync topology --apply`` against the real RabbitMQ."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import unquote, urlsplit

from click.testing import CliRunner

from worker.cli import main
from worker.ops.topology_export import record_topology


def queue_arguments(vhost: str) -> dict[str, dict[str, object]]:
    listed = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            vhost,
            "name",
            "arguments",
            "--formatter",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {
        q["name"]: {key: value for key, _type, value in q["arguments"]} for q in json.loads(listed)
    }


def test_given_a_broker_when_topology_is_applied_twice_then_every_queue_exists_as_recorded(
    broker_url: str,
) -> None:
    vhost = unquote(urlsplit(broker_url).path.removeprefix("/"))
    runner = CliRunner()

    first = runner.invoke(main, ["topology", "--apply"], env={"CCSYNC_BROKER_URL": broker_url})
    second = runner.invoke(main, ["topology", "--apply"], env={"CCSYNC_BROKER_URL": broker_url})

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, "applying is idempotent"
    recorded = record_topology()
    assert first.output.strip() == (
        f"applied {len(recorded.exchanges)} exchanges, {len(recorded.queues)} queues, "
        f"{len(recorded.bindings)} bindings"
    )
    present = queue_arguments(vhost)
    for queue in recorded.queues:
        assert present.get(queue.name) == queue.arguments, queue.name
