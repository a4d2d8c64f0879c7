"""Test support shared by the unit and the integration tests: where Redis is, and local ports.

Every test that talks to Redis uses ``REDIS_URL``: database 15 of the local Redis (or of
``CCSYNC_TEST_REDIS_HOST``:``CCSYNC_TEST_REDIS_PORT``), never the database 0 a developer's worker
may use. The fixtures (``redis_url``, ``clean_environment``...) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

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


def wait_for_port(
    port: int, *, timeout: float, process: subprocess.Popen[Any] | None = None, pause: float = 0.05
) -> bool:
    """Until something accepts a connection on ``127.0.0.1:port``: True then; False once
    ``timeout`` seconds pass, or at once if ``process`` (the one meant to listen) has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(pause)
    return False
