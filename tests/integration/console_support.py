"""Helpers of the console tests: the settings it runs with, and logging in as an operator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support import free_port
from worker.console import ConsoleConfig, console_config, create_app
from worker.settings import Settings

#: The console token of the tests (long enough for the console to accept it).
CONSOLE_TOKEN = "console-token-for-tests-0123456789"
#: Secrets the settings hold that no page or API answer may show.
API_CLIENT_SECRET = "client-secret-never-shown-4242"
REDIS_PASSWORD = "redis-password-never-shown-77"


def console_settings(broker_url: str, **overrides: Any) -> ConsoleConfig:
    settings = Settings(
        broker_url=broker_url,
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/15",
        client_id="console-tests",
        client_secret=API_CLIENT_SECRET,
        console_token=CONSOLE_TOKEN,
        **overrides,
    )
    return console_config(settings)


def login_form_token(client: httpx.Client) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def log_in(client: httpx.Client, token: str = CONSOLE_TOKEN, operator: str = "alice") -> Any:
    return client.post(
        "/login",
        data={"token": token, "operator": operator, "csrf_token": login_form_token(client)},
        follow_redirects=False,
    )


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


@contextmanager
def serving(config: ConsoleConfig) -> Iterator[str]:
    """The console served by uvicorn on a thread of this process; yields its base URL.

    Forwarded headers count as ``ccsync console`` counts them: from ``config``'s trusted
    proxies only (uvicorn's own trust of 127.0.0.1 is off, as there).
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the console did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def finished_job(client: httpx.Client, location: str, timeout: float = 30.0) -> dict[str, Any]:
    """The JSON of the job at ``location`` (``/jobs/ID``) once it is done or failed.

    While a job runs it holds the dead letters it is passing over: pages list them again after.
    """
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api{location}").json()
        if job["state"] in ("done", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"the job is still {job['state']}: {job}")
        time.sleep(0.1)


@contextmanager
def console_process(broker_url: str, log_path: Path, **env: str) -> Iterator[tuple[str, int]]:
    """``ccsync console`` as an operator starts it, with ``env`` added to the environment;
    yields its URL and its process id. Its output goes to ``log_path``."""
    port = free_port()
    with log_path.open("w+", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "console", "--port", str(port)],
            env={
                **os.environ,
                "CCSYNC_BROKER_URL": broker_url,
                "CCSYNC_CONSOLE_TOKEN": CONSOLE_TOKEN,
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/login").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"ccsync console did not start:\n{log.read()}")
                time.sleep(0.1)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(timeout=20)
