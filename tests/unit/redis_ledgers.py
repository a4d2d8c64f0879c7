"""Ledgers for the unit tests: in the real local Redis (database 15), or where none answers."""

from __future__ import annotations

import uuid

from tests.support import REDIS_URL, free_port
from worker.processing.ledger import Ledger


def fresh_ledger() -> Ledger:
    """A ledger of its own in the real Redis: no test sees another's applied events."""
    return Ledger.from_url(REDIS_URL, prefix=f"ccsync-test-{uuid.uuid4().hex}")


def unreachable_ledger() -> Ledger:
    """A ledger whose Redis refuses every connection."""
    return Ledger.from_url(f"redis://127.0.0.1:{free_port()}/0")
