"""Liveness and readiness of a real ``ccsync worker`` (issue 17, item 5), and Celery's own tools
(item 1): /livez follows the worker's event loop, /readyz the worker's own connections and token
cache; ``celery -A worker`` inspects and controls the running worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import metrics_worker_env
from tests.integration.producer import consumer_count
from tests.integration.waiting import wait_until
from worker.constants import BACKFILL_QUEUE, EVENTS_QUEUE
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

LIVENESS_SECONDS = 2


@pytest.fixture(scope="module")
def probed(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer
) -> Iterator[tuple[LocalWorker, int, dict[str, str]]]:
    port, env = metrics_worker_env(
        broker_url,
        sandbox_server.url,
        redis_url,
        CCSYNC_LIVENESS_SECONDS=str(LIVENESS_SECONDS),
    )
    with LocalWorker(env, concurrency=4) as worker:
        yield worker, port, env


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3)


def test_given_a_running_worker_then_it_is_live_and_ready(
    probed: tuple[LocalWorker, int, dict[str, str]], sandbox_server: SandboxServer
) -> None:
    _, port, _ = probed

    live = get(port, "/livez")
    ready = get(port, "/readyz")

    assert live.status_code == 200 and live.text.startswith("ok\nevent loop beat ")
    assert ready.status_code == 200, ready.text
    lines = ready.text.splitlines()
    assert lines[0] == "ok"
    assert lines[1:] == ["broker ok", "redis ok", "token ok (cached)", lines[4]]
    assert lines[4].startswith("api ok (HTTP ")


def test_given_readiness_asked_often_then_the_worker_fetches_no_new_token(
    probed: tuple[LocalWorker, int, dict[str, str]], sandbox: SandboxControl
) -> None:
    _, port, _ = probed
    get(port, "/readyz")
    before = _token_requests(sandbox)

    for _ in range(5):
        assert get(port, "/readyz").status_code == 200

    assert _token_requests(sandbox) == before


def _token_requests(sandbox: SandboxControl) -> int:
    return sum(1 for entry in sandbox.journal() if entry["path"].endswith("/token"))


def test_given_the_worker_stopped_when_probed_then_liveness_fails_and_recovers(
    probed: tuple[LocalWorker, int, dict[str, str]],
) -> None:
    worker, port, _ = probed
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(LIVENESS_SECONDS + 1)
        with pytest.raises(httpx.TimeoutException):
            get(port, "/livez")
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    wait_until(lambda: get(port, "/livez").status_code == 200, 10, "live again")


def celery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", *args, "--timeout", "5"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_given_celerys_tools_then_they_see_and_control_the_worker(
    probed: tuple[LocalWorker, int, dict[str, str]], broker_url: str
) -> None:
    worker, _, env = probed

    ping = celery(env, "inspect", "ping")
    queues = celery(env, "inspect", "active_queues")
    cancelled = celery(env, "control", "cancel_consumer", "ccsync.events")
    wait_until(lambda: "stopped consuming from ccsync.events" in worker.log, 10, "intake off")
    added = celery(env, "control", "add_consumer", "ccsync.events")
    wait_until(lambda: "started consuming from ccsync.events" in worker.log, 10, "intake on")

    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    assert "ccsync." in ping.stdout and "@" in ping.stdout
    assert "'name': 'ccsync.tasks'" in queues.stdout
    assert cancelled.returncode == 0 and added.returncode == 0

    # And the backfill lane is switched on its own: the live lane keeps consuming
    celery(env, "control", "cancel_consumer", "ccsync.backfill")
    wait_until(lambda: consumer_count(broker_url, BACKFILL_QUEUE) == 0, 10, "backfill off")
    assert consumer_count(broker_url, EVENTS_QUEUE) == 1
    celery(env, "control", "add_consumer", "ccsync.backfill")
    wait_until(lambda: consumer_count(broker_url, BACKFILL_QUEUE) == 1, 10, "backfill on")
