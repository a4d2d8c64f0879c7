"""A real ``ccsync worker`` process per test module, against the session's vhost and sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection

from tests.integration.producer import Producer, purge
from tests.support import REDIS_URL
from worker.amqp.topology import declare_topology
from worker.constants import DEAD_LETTER_QUEUE, EVENTS_QUEUE, TASKS_QUEUE
from worker.sandbox import SandboxServer
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
    purge(broker_url, EVENTS_QUEUE, TASKS_QUEUE, DEAD_LETTER_QUEUE)


@pytest.fixture
def producer(broker_url: str) -> Iterator[Producer]:
    publisher = Producer(broker_url)
    yield publisher
    publisher.close()
