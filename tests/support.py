"""Test support shared by the unit and the integration tests: where Redis is, and local ports.

Every test that talks to Redis uses ``REDIS_URL``: database 15 of the local Redis (or of
``CCSYNC_TEST_REDIS_HOST``:``CCSYNC_TEST_REDIS_PORT``), never the database 0 a developer's worker
may use. The fixtures (``redis_url``, ``clean_environment``...) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import socket

REDIS_HOST = os.environ.get("CCSYNC_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CCSYNC_TEST_REDIS_PORT", "6379"))
REDIS_DATABASE = 15
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DATABASE}"


def free_port() -> int:
    """A local port nothing listens on right now: bound, then released.

    A server the test starts may take it; a client connecting to it is refused (unless something
    else took it meanwhile).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
