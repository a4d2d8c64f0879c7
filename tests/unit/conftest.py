"""Fixtures of the unit tests that use the real local Redis (database 15)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support import REDIS_URL
from worker.processing.ledger import Ledger


@pytest.fixture
def ledger_prefix() -> Iterator[str]:
    """A key space of this test's own in Redis db 15, removed afterwards."""
    name = f"ccsync-test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def make_ledger(ledger_prefix: str) -> Iterator[Callable[..., Ledger]]:
    """Ledgers on this test's key space (or ``key_prefix``), each over a client of its own, as
    separate workers would have; the clients are closed afterwards."""
    clients: list[redis.Redis] = []

    def make(lock_wait_seconds: float = 5.0, key_prefix: str | None = None) -> Ledger:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
        clients.append(client)
        return Ledger(
            client, prefix=key_prefix or ledger_prefix, lock_wait_seconds=lock_wait_seconds
        )

    yield make
    for client in clients:
        client.close()
