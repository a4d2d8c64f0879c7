"""The worker's HTTP endpoints (/metrics, /livez, /readyz): where they listen, and how many
threads any number of clients can make them use."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import free_port
from worker.observability.endpoints import ProbeAnswer, serve_endpoints


def _fine() -> ProbeAnswer:
    return ProbeAnswer(True, "fine")


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def test_the_endpoints_listen_on_loopback_unless_told_otherwise(port: int) -> None:
    server = serve_endpoints(port, live=_fine, ready=_fine)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_idle_clients_hold_no_more_threads_than_the_cap_and_not_for_long(port: int) -> None:
    # Given endpoints allowed 2 threads, idle connections dropped after half a second
    server = serve_endpoints(port, live=_fine, ready=_fine, max_threads=2, idle_seconds=0.5)
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    try:
        # When ten clients connect and send nothing
        time.sleep(0.3)
        # Then at most two threads serve them
        assert threading.active_count() - before <= 2
        # And once the idle ones are dropped, a probe is answered again
        time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code == 200
    finally:
        for connection in idle:
            connection.close()
        server.shutdown()
        server.server_close()
