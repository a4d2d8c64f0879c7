"""Issue 17, item 2: ``ccsync pause`` and ``ccsync resume`` hold every worker of the deployment.

Two real workers share the session's virtual host; the pause is a record in Redis that each of
them watches, and a worker that starts reads it before it consumes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import worker_env
from tests.integration.events import native
from tests.integration.producer import Producer, consumer_count, queue_depth
from tests.integration.waiting import wait_until
from tests.support import free_port
from worker.constants import EVENTS_QUEUE, TASKS_QUEUE
from worker.processing.pause import PauseStore, virtual_host, who_am_i
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

EVENTS = 40
#: Seconds the paused workers must leave the waiting events alone (the issue's figure).
QUIET_SECONDS = 10.0
OBEYED = "consumption paused by"


def ccsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CCSYNC_", "CLOUDCOCKPIT_"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def patched(sandbox: SandboxControl, customers: set[str]) -> list[str]:
    return [
        entry["customerId"]
        for entry in sandbox.journal()
        if entry["method"] == "PATCH" and entry["customerId"] in customers
    ]


@pytest.fixture
def never_left_paused(broker_url: str, redis_url: str) -> Iterator[PauseStore]:
    store = PauseStore.from_url(redis_url, deployment=virtual_host(broker_url))
    store.resume()
    yield store
    store.resume()
    store.close()


def test_given_two_workers_when_paused_then_none_takes_an_event_until_resumed_and_none_is_lost(
    broker_url: str,
    redis_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
    producer: Producer,
    never_left_paused: PauseStore,
) -> None:
    metrics_port = free_port()
    env = worker_env(broker_url, sandbox_server.url, redis_url)
    first = LocalWorker({**env, "CCSYNC_METRICS_PORT": str(metrics_port)}, concurrency=4)
    second = LocalWorker(env, concurrency=4)
    with first, second:
        wait_until(
            lambda: consumer_count(broker_url, EVENTS_QUEUE) == 2, 10, "both workers consuming"
        )

        # When an operator pauses the deployment
        paused = ccsync(env, "pause", "--reason", "deploy of v2")
        assert paused.returncode == 0, paused.stderr
        assert f"paused by {who_am_i()} at " in paused.stdout
        assert "deploy of v2" in paused.stdout

        # Then both workers obey within a few seconds, each saying who paused it and why
        for process in (first, second):
            wait_until(lambda p=process: OBEYED in p.log, 5, "the worker obeying the pause")
            line = next(line for line in process.log.splitlines() if OBEYED in line)
            assert who_am_i() in line and "deploy of v2" in line
        wait_until(
            lambda: (
                consumer_count(broker_url, EVENTS_QUEUE)
                == consumer_count(broker_url, TASKS_QUEUE)
                == 0
            ),
            5,
            "no consumer left on ccsync.events and ccsync.tasks",
        )
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert f'ccsync_paused{{by="{who_am_i()}",reason="deploy of v2"}} 1.0' in metrics
        health = ccsync(env, "health")
        assert "consumption PAUSED: paused by" in health.stdout and "deploy of v2" in health.stdout
        assert health.returncode == 0, health.stdout + health.stderr

        # And events published meanwhile wait in the queue: no PATCH for 10 s
        events = [native(identifier=f"PAUSED-{n}") for n in range(EVENTS)]
        customers = {event["customerId"] for event in events}
        for event in events:
            producer.publish(json.dumps(event).encode())
        time.sleep(QUIET_SECONDS)
        assert patched(sandbox, customers) == []
        assert queue_depth(broker_url, EVENTS_QUEUE) == EVENTS

        # And a worker restarted meanwhile starts paused
        second.stop()
        second.start()
        wait_until(lambda: second.log.count(OBEYED) == 2, 5, "the restarted worker paused")
        time.sleep(2)
        assert patched(sandbox, customers) == []
        assert consumer_count(broker_url, EVENTS_QUEUE) == 0

        # When the operator resumes
        resumed = ccsync(env, "resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "the pause (paused by" in resumed.stdout and "deploy of v2" in resumed.stdout

        # Then every event is applied once, none lost, none with a spent attempt
        wait_until(
            lambda: sorted(patched(sandbox, customers)) == sorted(customers),
            30,
            f"all {EVENTS} events applied",
        )
        assert queue_depth(broker_url, EVENTS_QUEUE) == 0
        stored = {c["id"]: c["relationships"] for c in sandbox.state() if c["id"] in customers}
        assert {cid: next(iter(rel.values())) for cid, rel in stored.items()} == {
            event["customerId"]: event["internalIdentifier"] for event in events
        }
        assert "attempt 2" not in first.log + second.log
        wait_until(
            lambda: (
                'ccsync_paused{by="",reason=""} 0.0'
                in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            ),
            5,
            "ccsync_paused back to 0",
        )
        assert ccsync(env, "resume").stdout.strip() == "not paused: nothing to resume"


def test_given_redis_unreachable_when_pausing_then_it_fails_in_one_line(broker_url: str) -> None:
    env = {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/15",
    }

    result = ccsync(env, "pause", "--reason", "x")

    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach Redis at redis://***@127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1 and "s3cret" not in result.stderr


def test_given_status_then_pause_tells_the_state_and_changes_nothing(
    broker_url: str, redis_url: str, never_left_paused: PauseStore
) -> None:
    env = {"CCSYNC_BROKER_URL": broker_url, "CCSYNC_REDIS_URL": redis_url}

    running = ccsync(env, "pause", "--status", "--json")
    paused = ccsync(env, "pause", "--reason", "migration", "--json")
    status = ccsync(env, "pause", "--status")
    status_json = ccsync(env, "pause", "--status", "--json")

    assert running.returncode == 0, running.stderr
    assert json.loads(running.stdout) == {"paused": False, "virtual_host": virtual_host(broker_url)}
    assert json.loads(paused.stdout)["was_paused"] is False
    assert status.stdout.startswith("paused by ") and status.stdout.strip().endswith(": migration")
    state = json.loads(status_json.stdout)
    assert (state["paused"], state["reason"]) == (True, "migration")
    assert never_left_paused.read() is not None
