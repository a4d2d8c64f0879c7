"""ops/rabbitmq/*.json imported into the running RabbitMQ, in a temporary vhost each time.

``rabbitmqctl import_definitions`` imports for every vhost a file names, so each test rewrites the
vhost of every object to its own fresh vhost before importing, and deletes that vhost after.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kombu import Connection, Producer

from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT
from tools.generate_ops import DEFINITIONS_PATH
from worker.amqp.topology import declare_topology, delay_entry_exchange, delay_routing_key
from worker.constants import TASKS_QUEUE

REPO = Path(__file__).resolve().parents[2]
DEV_ACCESS = REPO / "ops" / "rabbitmq" / "dev-access.json"


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH: these tests import definitions with it")
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def listing(kind: str, vhost: str, *columns: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        rabbitmqctl(f"list_{kind}", "-p", vhost, *columns, "--formatter", "json") or "[]"
    )
    return rows


def in_vhost(definitions: dict[str, Any], vhost: str) -> dict[str, Any]:
    """The same definitions with every object moved to ``vhost``."""
    moved: dict[str, Any] = json.loads(json.dumps(definitions))
    for kind in ("exchanges", "queues", "bindings", "policies", "parameters", "permissions"):
        for item in moved.get(kind, []):
            item["vhost"] = vhost
    for item in moved.get("vhosts", []):
        item["name"] = vhost
    return moved


def import_definitions(definitions: dict[str, Any]) -> None:
    # Through standard input: rabbitmqctl may run as another user, who cannot read pytest's tmp.
    rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(definitions))


@pytest.fixture
def vhost() -> Iterator[str]:
    name = f"ccsync-ops-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    """Polls ``check()`` until truthy: the import finishes asynchronously on some versions."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


Snapshot = tuple[dict[str, Any], dict[str, Any], set[tuple[str, ...]]]


def snapshot(vhost: str) -> Snapshot:
    queues: dict[str, Any] = {
        q["name"]: q
        for q in listing("queues", vhost, "name", "durable", "auto_delete", "arguments")
    }
    exchanges: dict[str, Any] = {
        e["name"]: e
        for e in listing("exchanges", vhost, "name", "type", "durable", "auto_delete")
        if e["name"] and not e["name"].startswith("amq.")
    }
    bindings: set[tuple[str, ...]] = {
        (b["source_name"], b["destination_kind"], b["destination_name"], b["routing_key"])
        for b in listing(
            "bindings",
            vhost,
            "source_name",
            "destination_kind",
            "destination_name",
            "routing_key",
        )
        if b["source_name"]  # the default exchange's implicit bindings are not ours
    }
    return queues, exchanges, bindings


def imported(vhost: str, definitions: dict[str, Any]) -> Snapshot:
    """The vhost's objects once as many as ``definitions`` holds are there."""
    wanted = (
        len(definitions["queues"]),
        len(definitions["exchanges"]),
        len(definitions["bindings"]),
    )

    def complete() -> Snapshot | None:
        current = snapshot(vhost)
        return current if tuple(map(len, current)) == wanted else None

    result: Snapshot | None = wait_for(complete)
    assert result is not None, f"the import into {vhost} did not complete: {snapshot(vhost)}"
    return result


def test_given_definitions_json_when_imported_into_a_vhost_then_every_object_exists_as_defined(
    vhost: str,
) -> None:
    definitions = json.loads(DEFINITIONS_PATH.read_text("utf-8"))

    import_definitions(in_vhost(definitions, vhost))

    queues, exchanges, bindings = imported(vhost, definitions)

    expected_queues = {q["name"]: q for q in definitions["queues"]}
    assert queues.keys() == expected_queues.keys()
    for name, queue in expected_queues.items():
        # rabbitmqctl's JSON shows an AMQP table as [key, type, value] triples.
        arguments = {key: value for key, _type, value in queues[name]["arguments"]}
        assert arguments == queue["arguments"], name
        assert queues[name]["durable"] is True
    assert {n: (e["type"], e["durable"]) for n, e in exchanges.items()} == {
        e["name"]: (e["type"], e["durable"]) for e in definitions["exchanges"]
    }
    assert bindings == {
        (b["source"], b["destination_type"], b["destination"], b["routing_key"])
        for b in definitions["bindings"]
    }


def test_given_imported_definitions_when_the_worker_declares_its_topology_then_nothing_changes(
    vhost: str,
) -> None:
    """The broker refuses a re-declaration with other arguments: the file is the worker's own."""
    definitions = json.loads(DEFINITIONS_PATH.read_text("utf-8"))
    import_definitions(in_vhost(definitions, vhost))
    before = imported(vhost, definitions)

    with Connection(f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{quote(vhost)}") as conn:
        declare_topology(conn)

    assert snapshot(vhost) == before


def test_given_imported_definitions_when_a_retry_is_delayed_then_the_ladder_brings_it_back(
    vhost: str,
) -> None:
    definitions = json.loads(DEFINITIONS_PATH.read_text("utf-8"))
    import_definitions(in_vhost(definitions, vhost))
    imported(vhost, definitions)
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{quote(vhost)}"

    with Connection(url) as connection:
        channel = connection.channel()
        published = time.monotonic()
        Producer(channel).publish(
            b"retry me",
            exchange=delay_entry_exchange().name,
            routing_key=delay_routing_key(0.5, TASKS_QUEUE),
            content_type="application/octet-stream",
            delivery_mode=2,
        )
        message = wait_for(lambda: channel.basic_get(TASKS_QUEUE, no_ack=True), timeout=15)
        arrived = time.monotonic() - published

    assert message is not None and message.body == b"retry me"
    assert arrived >= 0.45


def test_given_the_dev_access_file_when_imported_then_its_account_logs_in_with_guest(
    vhost: str,
) -> None:
    """Renamed user and vhost: the broker's real guest account is shared with other tests."""
    access = in_vhost(json.loads(DEV_ACCESS.read_text("utf-8")), vhost)
    user = f"ccsync-ops-{uuid.uuid4().hex[:8]}"
    access["users"][0]["name"] = user
    access["permissions"][0]["user"] = user

    try:
        import_definitions(access)

        login = rabbitmqctl("authenticate_user", user, "guest")
        permissions = listing("permissions", vhost)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)

    assert "Success" in login or login.strip() == ""
    assert {"user": user, "configure": ".*", "write": ".*", "read": ".*"} in permissions
