"""Fixtures of the unit tests that use the real local Redis (database 15)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/15"


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
