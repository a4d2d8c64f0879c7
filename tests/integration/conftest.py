"""A real ``ccsync worker`` process per test module, against the session's vhost and sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pytest
from kombu import Connection

from tests.integration.events import native
from tests.integration.producer import Letter, Producer, purge, read_dead_letters
from tests.support import REDIS_URL, free_port
from worker.amqp.topology import declare_topology
from worker.constants import BACKFILL_QUEUE, DEAD_LETTER_QUEUE, EVENTS_QUEUE, TASKS_QUEUE
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

TENANT = "tests.cloudcockpit.local"


def worker_env(
    broker_url: str, sandbox_url: str, redis_url: str = REDIS_URL, **overrides: str
) -> dict[str, str]:
    """Client credentials against the sandbox's token endpoint: the flow production uses."""
    env = {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_REDIS_URL": redis_url,
        "CLOUDCOCKPIT_BASE_URL": sandbox_url,
        "CLOUDCOCKPIT_TOKEN_URL": f"{sandbox_url}/oauth2/v2.0/token",
        "CLOUDCOCKPIT_CLIENT_ID": "sandbox-client",
        "CLOUDCOCKPIT_CLIENT_SECRET": "sandbox-secret",
        "CLOUDCOCKPIT_TOKEN": "",
        "CLOUDCOCKPIT_TENANT": TENANT,
        "CCSYNC_RETRY_DELAYS": "1,2,3",
        "CCSYNC_RETRY_JITTER": "0.1",
    }
    env.update(overrides)
    return env


def metrics_worker_env(
    broker_url: str, sandbox_url: str, redis_url: str = REDIS_URL, **overrides: str
) -> tuple[int, dict[str, str]]:
    """``worker_env`` serving metrics and probes on a free port: that port, and the environment."""
    port = free_port()
    env = worker_env(broker_url, sandbox_url, redis_url, CCSYNC_METRICS_PORT=str(port), **overrides)
    return port, env


def dead_letter_after_retries(
    sandbox: SandboxControl,
    producer: Producer,
    broker_url: str,
    headers: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Letter]:
    """An event the API answers 500 every time, published (with ``headers``) to a running
    worker: the event, and its dead letter once every retry failed."""
    event = native()
    sandbox.add_faults(event["customerId"], {"status": 500, "times": 100})
    producer.publish(json.dumps(event).encode(), "application/json", headers=headers)
    [letter] = read_dead_letters(broker_url, expected=1, timeout=30)
    return event, letter


class WorkerEnv(Protocol):
    def __call__(self, **overrides: str) -> dict[str, str]: ...


@pytest.fixture
def own_worker_env(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer, clean_queues: None
) -> WorkerEnv:
    """Given empty queues, the session's vhost, Redis and sandbox: the environment of a worker the
    test starts itself (``worker_env``), with the test's overrides by name."""

    def env(**overrides: str) -> dict[str, str]:
        return worker_env(broker_url, sandbox_server.url, redis_url, **overrides)

    return env


@pytest.fixture(scope="module")
def worker(broker_url: str, redis_url: str, sandbox_server: SandboxServer) -> Iterator[LocalWorker]:
    env = worker_env(broker_url, sandbox_server.url, redis_url)
    with LocalWorker(env, concurrency=8) as process:
        yield process


@pytest.fixture
def clean_queues(broker_url: str) -> None:
    """Each test starts with empty queues (the delay ladder drains by itself)."""
    with Connection(broker_url) as connection:
        declare_topology(connection)
    purge(broker_url, EVENTS_QUEUE, BACKFILL_QUEUE, TASKS_QUEUE, DEAD_LETTER_QUEUE)


@pytest.fixture
def producer(broker_url: str) -> Iterator[Producer]:
    publisher = Producer(broker_url)
    yield publisher
    publisher.close()
