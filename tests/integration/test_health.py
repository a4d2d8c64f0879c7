"""``ccsync health`` as a probe runs it: a real process against real RabbitMQ, Redis and sandbox.

Failures are made without stopping anything shared (other tests run at the same time): the URLs
point at ports that were just bound and closed, or at a socket that accepts and never answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import free_port
from worker.sandbox import SandboxServer

TOKEN = "sandbox-token"
BROKER_PASSWORD = "pr0be-broker-pw"
REDIS_PASSWORD = "pr0be-redis-pw"
CLIENT_SECRET = "pr0be-client-secret"


@dataclass
class Probe:
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> dict[str, str]:
        """Each part's line, by part name."""
        return {line.split(" ", 1)[0]: line for line in self.stdout.splitlines()}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture
def healthy_env(broker_url: str, redis_url: str, sandbox_server: SandboxServer) -> dict[str, str]:
    """Given every part up: the session's vhost, local Redis, the sandbox with a static token."""
    return {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_REDIS_URL": redis_url,
        "CLOUDCOCKPIT_BASE_URL": sandbox_server.url,
        "CLOUDCOCKPIT_TOKEN": TOKEN,
    }


def probe(env: dict[str, str], *args: str) -> Probe:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CCSYNC_", "CLOUDCOCKPIT_")) and k != "SENTRY_DSN"
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "health", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Probe(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def test_given_everything_up_when_probed_then_every_part_is_ok_and_it_exits_0(
    healthy_env: dict[str, str],
) -> None:
    result = probe(healthy_env)

    assert result.status == 0, result.stdout + result.stderr
    assert list(result.lines) == ["broker", "redis", "token", "api", "consumption"]
    assert result.lines["broker"].startswith("broker ok")
    # Both lanes, live and bulk, with what waits on each (or that no worker declared them yet)
    assert "ccsync.events " in result.lines["broker"]
    assert "ccsync.backfill " in result.lines["broker"]
    assert result.lines["redis"] == "redis ok"
    assert result.lines["token"] == "token ok (static token)"
    assert result.lines["api"].startswith("api ok (HTTP ")
    assert result.lines["consumption"] == "consumption running"
    assert result.stderr == ""


def test_given_json_when_probed_then_one_object_tells_each_part_and_consumption(
    healthy_env: dict[str, str],
) -> None:
    result = probe(healthy_env, "--json")

    assert result.status == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert [(part["part"], part["ok"]) for part in report["parts"]] == [
        ("broker", True),
        ("redis", True),
        ("token", True),
        ("api", True),
    ]
    assert report["consumption"] == "consumption running"


def test_given_client_credentials_when_probed_then_the_token_is_fetched(
    healthy_env: dict[str, str], sandbox_server: SandboxServer
) -> None:
    env = {k: v for k, v in healthy_env.items() if k != "CLOUDCOCKPIT_TOKEN"}
    env |= {
        "CLOUDCOCKPIT_CLIENT_ID": sandbox_server.options.client_id,
        "CLOUDCOCKPIT_CLIENT_SECRET": sandbox_server.options.client_secret,
        "CLOUDCOCKPIT_TOKEN_URL": f"{sandbox_server.url}/tenant/oauth2/v2.0/token",
    }

    result = probe(env)

    assert result.status == 0, result.stdout + result.stderr
    assert result.lines["token"] == "token ok (client credentials)"


def test_given_the_broker_unreachable_when_probed_then_it_exits_1_naming_the_broker(
    healthy_env: dict[str, str],
) -> None:
    url = f"amqp://ops:{BROKER_PASSWORD}@127.0.0.1:{free_port()}//"

    result = probe({**healthy_env, "CCSYNC_BROKER_URL": url})

    assert result.status == 1
    assert result.lines["broker"].startswith("broker FAILED: ")
    assert "refused" in result.lines["broker"].lower()
    assert all(result.lines[part].startswith(f"{part} ok") for part in ("redis", "token", "api"))
    assert result.stderr.strip() == "Error: unhealthy: broker"
    assert BROKER_PASSWORD not in result.stdout + result.stderr


def test_given_redis_unreachable_when_probed_then_it_exits_1_naming_redis(
    healthy_env: dict[str, str],
) -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"

    result = probe({**healthy_env, "CCSYNC_REDIS_URL": url})

    assert result.status == 1
    assert result.lines["redis"].startswith("redis FAILED: ")
    assert result.lines["broker"].startswith("broker ok")
    assert result.stderr.strip() == "Error: unhealthy: redis"
    assert REDIS_PASSWORD not in result.stdout + result.stderr


def test_given_a_wrong_client_secret_when_probed_then_the_token_fails_and_the_secret_stays_hidden(
    healthy_env: dict[str, str], sandbox_server: SandboxServer
) -> None:
    env = {k: v for k, v in healthy_env.items() if k != "CLOUDCOCKPIT_TOKEN"}
    env |= {
        "CLOUDCOCKPIT_CLIENT_ID": sandbox_server.options.client_id,
        "CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET,
        "CLOUDCOCKPIT_TOKEN_URL": f"{sandbox_server.url}/tenant/oauth2/v2.0/token",
    }

    result = probe(env)

    assert result.status == 1
    assert result.lines["token"] == "token FAILED: token endpoint answered 401"
    assert result.lines["api"].startswith("api ok")
    assert CLIENT_SECRET not in result.stdout + result.stderr


def test_given_the_api_unreachable_when_probed_then_it_exits_1_naming_the_api(
    healthy_env: dict[str, str],
) -> None:
    base_url = f"http://127.0.0.1:{free_port()}"

    result = probe({**healthy_env, "CLOUDCOCKPIT_BASE_URL": base_url})

    assert result.status == 1
    assert result.lines["api"].startswith(f"api FAILED: no answer from {base_url}: ConnectError")
    assert result.stderr.strip() == "Error: unhealthy: api"


def test_given_everything_down_when_probed_then_every_failing_part_is_named(
    healthy_env: dict[str, str],
) -> None:
    env = {
        "CCSYNC_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        "CCSYNC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "CLOUDCOCKPIT_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }

    result = probe({**healthy_env, **env})

    assert result.status == 1
    assert result.stderr.strip() == "Error: unhealthy: broker, redis, api"


def test_given_a_broker_that_never_answers_when_probed_then_the_timeout_bounds_the_wait(
    healthy_env: dict[str, str], silent_port: int
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent_port}//"

    result = probe({**healthy_env, "CCSYNC_BROKER_URL": url}, "--timeout", "1")

    assert result.status == 1
    assert result.lines["broker"].startswith("broker FAILED: ")
    assert result.seconds < 10, f"a probe with --timeout 1 took {result.seconds:.1f}s"
