"""Issue 26, item 4: ``ccsync worker --processes 2`` runs two full workers under one parent.

Each child is a Celery node of its own that ``celery inspect ping`` answers for and a consumer of
ccsync.events; a child SIGKILLed is started again and events are still applied; the parent's
endpoints speak for both; SIGTERM to the parent stops everything with exit status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal

import httpx
import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.journal import wait_applied
from tests.integration.producer import Producer, consumer_count
from tests.integration.test_probes import celery
from tests.integration.waiting import wait_until
from tests.support import free_port
from worker.constants import EVENTS_QUEUE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

PROCESSES = 2


def node_pids(env: dict[str, str]) -> set[int]:
    """The pids in the node names (``ccsync.<pid>@host``) that answer ``celery inspect ping``."""
    ping = celery(env, "inspect", "ping")
    return {int(pid) for pid in re.findall(r"ccsync\.(\d+)@\S+: OK", ping.stdout)}


def nodes_of_processes(env: dict[str, str], *, without: int = 0) -> set[int]:
    """The pids of ``PROCESSES`` nodes, ``without`` not among them; empty until there are."""
    found = node_pids(env)
    return found if len(found) == PROCESSES and without not in found else set()


def received(port: int) -> float:
    """``ccsync_events_received_total`` as the parent serves it: the sum over its children."""
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r"^ccsync_events_received_total (\S+)$", metrics, re.M)
    assert found is not None, metrics
    return float(found.group(1))


def publish_and_wait(producer: Producer, sandbox: SandboxControl, count: int, tag: str) -> None:
    events = [native(identifier=f"{tag}-{n}") for n in range(count)]
    for event in events:
        producer.publish(json.dumps(event).encode(), "application/json")
    for event in events:
        wait_applied(sandbox, event["customerId"])


@pytest.mark.timeout(300)
def test_given_two_processes_then_both_consume_a_killed_one_comes_back_and_sigterm_ends_all(
    own_worker_env: WorkerEnv, broker_url: str, sandbox: SandboxControl, producer: Producer
) -> None:
    port = free_port()
    env = own_worker_env(CCSYNC_METRICS_PORT=str(port))
    parent = LocalWorker(env, concurrency=8, processes=PROCESSES).start(timeout=120)
    try:
        # Two Celery nodes, each a process of the parent's, each consuming ccsync.events
        pids = wait_until(lambda: nodes_of_processes(env), 60, "two nodes")
        assert parent.pid not in pids
        assert consumer_count(broker_url, EVENTS_QUEUE) == PROCESSES
        assert parent.log.count("ccsync worker ready") == 1, parent.log
        publish_and_wait(producer, sandbox, 20, "BOTH")

        # The parent's endpoints speak for both children: the counters summed, a line for each
        for probe in ("/livez", "/readyz"):
            answer = httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.text.count("process ") == PROCESSES, answer.text
        assert received(port) == 20

        # When one child is SIGKILLed, the parent says why and starts it again
        killed = min(pids)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: "killed by SIGKILL" in parent.log, 30, "the parent to see the death")
        again = wait_until(
            lambda: nodes_of_processes(env, without=killed), 90, "the child started again"
        )
        wait_until(
            lambda: consumer_count(broker_url, EVENTS_QUEUE) == PROCESSES, 30, "two consumers"
        )
        assert parent.alive
        publish_and_wait(producer, sandbox, 20, "AFTER-KILL")
        assert received(port) >= 40  # the killed child's count is kept (and its redeliveries)

        # SIGTERM to the parent: every child stops warm, the parent exits 0
        status = parent.stop(timeout=90)
    finally:
        parent.stop()
    assert status == 0, parent.log[-3000:]
    for pid in again:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert consumer_count(broker_url, EVENTS_QUEUE) == 0
