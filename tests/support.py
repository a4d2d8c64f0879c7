"""Test support shared by the unit and the integration tests: where Redis is, and local ports.

Every test that talks to Redis uses ``REDIS_URL``: database 15 of the local Redis (or of
``CCSYNC_TEST_REDIS_HOST``:``CCSYNC_TEST_REDIS_PORT``), never the database 0 a developer's worker
may use. The fixtures (``redis_url``, ``clean_environment``...) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import abc
import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

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


class ServerGroup(abc.ABC):
    """Servers a test starts, their files under ``root`` (a new temporary directory): ``close``
    stops them and removes ``root``, at the latest at interpreter exit. A subclass sets what
    ``stop_servers`` reads before calling ``__init__``. ``with group:`` starts and closes it."""

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(self.close)

    @abc.abstractmethod
    def start(self) -> Self:
        """Start every server and wait until the group serves."""

    @abc.abstractmethod
    def stop_servers(self) -> None:
        """Stop every server started so far (none, or some, if starting failed)."""

    def close(self) -> None:
        self.stop_servers()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
