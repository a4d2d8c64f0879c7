"""Ledgers for the unit tests: in the real local Redis (database 15), or where none answers."""

from __future__ import annotations

import socket
import uuid

from worker.processing.ledger import Ledger

REDIS_URL = "redis://127.0.0.1:6379/15"


def fresh_ledger() -> Ledger:
    """A ledger of its own in the real Redis: no test sees another's applied events."""
    return Ledger.from_url(REDIS_URL, prefix=f"ccsync-test-{uuid.uuid4().hex}")


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def unreachable_ledger() -> Ledger:
    """A ledger whose Redis refuses every connection."""
    return Ledger.from_url(f"redis://127.0.0.1:{closed_port()}/0")
