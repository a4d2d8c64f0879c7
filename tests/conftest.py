"""Fixtures shared by all tests: real RabbitMQ (a throwaway vhost), Redis, and the sandbox;
an environment free of the machine's own settings.

A missing service fails the run loudly; nothing here is skipped or replaced by a mock. Constants
and helpers the tests import are in ``tests/support.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from tests.support import REDIS_HOST, REDIS_PORT, REDIS_URL
from worker.sandbox import SandboxControl, SandboxOptions, SandboxServer

RABBITMQ_HOST = os.environ.get("CCSYNC_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("CCSYNC_TEST_RABBITMQ_PORT", "5672"))
# CloudCockpit's OpenAPI description, shipped inside the sandbox package.
OPENAPI = files("worker.sandbox") / "openapi.yaml"


#: Fixtures that reach the local services: a test using one is of the ``integration`` tier.
SERVICE_FIXTURES = frozenset(
    {"broker_url", "redis_url", "sandbox_server", "sandbox", "ledger_prefix", "make_ledger"}
)
#: Unit modules that reach Redis or RabbitMQ without one of those fixtures (``REDIS_URL`` itself,
#: or a command that connects): ``integration`` too.
SERVICE_MODULES = frozenset(
    {"test_apply.py", "test_ops_cli.py", "test_settings.py", "test_stages.py"}
)
#: Modules that stop, kill or cut off RabbitMQ nodes or Redis servers of their own, for minutes.
DISRUPTIVE_MODULES = frozenset({"test_chaos.py", "test_cluster.py", "test_liveness.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers (pyproject.toml's markers), by where a test lives and what it uses: ``unit``
    needs no service; ``integration`` the local RabbitMQ, Redis or sandbox; ``slow`` and
    ``disruptive`` the chaos and cluster runs (integration as well)."""
    for item in items:
        module = item.path.name
        uses_a_service = (
            item.path.parent.name == "integration"
            or module in SERVICE_MODULES
            or bool(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))
        )
        item.add_marker("integration" if uses_a_service else "unit")
        if module in DISRUPTIVE_MODULES:
            item.add_marker("slow")
            item.add_marker("disruptive")


def _require_port(name: str, host: str, port: int, how: str) -> None:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"{name} is not reachable at {host}:{port} ({exc}); start it: {how}")


def rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH: the tests make a throwaway vhost with it")
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def throwaway_vhost(prefix: str) -> Iterator[str]:
    """The URL of a new vhost named ``prefix`` and a random suffix, guest's to use; deleted on
    leaving."""
    vhost = f"{prefix}{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A fresh vhost for this test session, deleted afterwards: tests never see foreign queues."""
    _require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT, "rabbitmq-server -detached")
    with throwaway_vhost("ccsync-test-") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Database 15 of the local Redis; ledgers in tests use their own key prefixes or customers."""
    _require_port("Redis", REDIS_HOST, REDIS_PORT, "redis-server --daemonize yes")
    return REDIS_URL


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Given no ccsync, CloudCockpit or Sentry variable from the machine running the tests, and
    the test's own working directory, where no stray ``.env`` can take part.

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("clean_environment")``.
    """
    for name in list(os.environ):
        if name.startswith(("CCSYNC_", "CLOUDCOCKPIT_")) or name == "SENTRY_DSN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions()) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxControl]:
    """The sandbox's controls, with state, journal and faults reset for this test."""
    with sandbox_server.control() as control:
        control.reset()
        yield control


@pytest.fixture(scope="session")
def openapi_document() -> dict[str, object]:
    import yaml

    if not OPENAPI.is_file():
        pytest.fail(f"{OPENAPI} is missing: the contract tests validate against it")
    document: dict[str, object] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return document
