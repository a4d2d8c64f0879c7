"""The console under abuse, against a real broker: forged forwarded addresses, concurrent
guesses, foreign Host headers, oversized or multipart login forms, long operator names, and
sessions an operator wants gone."""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.console_support import (
    CONSOLE_TOKEN,
    console_process,
    console_settings,
    csrf_of,
    log_in,
    login_form_token,
    serving,
)
from tests.integration.test_dlq_support import fresh_queues
from worker.console.audit import AUDIT_LOGGER
from worker.console.login_limit import MAX_FAILURES

pytestmark = pytest.mark.usefixtures("clean_environment")

#: The console's peak memory allowed while it refuses a 100 MB login form.
PEAK_MEMORY_BYTES = 200 * 1024 * 1024
FORM_BYTES = 100 * 1024 * 1024
WRONG_TOKEN = "guessing-the-console-token"


@pytest.fixture
def console(broker_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``ccsync console`` with the default settings; its URL and process id."""
    fresh_queues(broker_url)
    with console_process(broker_url, tmp_path / "console.log") as served:
        yield served


@pytest.fixture
def client(broker_url: str) -> Iterator[httpx.Client]:
    fresh_queues(broker_url)
    with serving(console_settings(broker_url)) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


def peak_memory_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert found is not None, status
    return int(found.group(1)) * 1024


def post_large_form(url: str, *, head: dict[str, str], body: Iterator[bytes]) -> int:
    """POSTs /login with ``head`` and then ``body``, unless the console answers first (then no
    more of the body is sent); returns the status of the answer."""
    parts = urlsplit(url)
    lines = ["POST /login HTTP/1.1", f"Host: {parts.hostname}"]
    lines += [f"{name}: {value}" for name, value in head.items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answered, _, _ = select.select([sock], [], [], 1.0)
        if not answered:
            for chunk in body:
                sock.sendall(chunk)
        answer = sock.recv(4096)
    return int(answer.split()[1])


def test_a_100_mb_login_form_is_refused_without_the_memory_to_hold_it(
    console: tuple[str, int],
) -> None:
    url, pid = console
    # Given a login form of 100 MB in fields of 1 MB each (each under a form parser's usual
    # limit of a field), as a browser would send it, with its length
    field = b"&operator=" + b"a" * (1024 * 1024 - 10)
    status = post_large_form(
        url,
        head={
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(len(field) * 100),
        },
        body=iter([field] * 100),
    )
    # Then it is refused, and the console never held it
    assert status == 413
    assert peak_memory_bytes(pid) < PEAK_MEMORY_BYTES
    # And the same without a length (chunked) is refused too
    chunked = post_large_form(
        url,
        head={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
        body=iter([f"{len(field):x}\r\n".encode() + field + b"\r\n"] * 100 + [b"0\r\n\r\n"]),
    )
    assert chunked in (411, 413)
    assert peak_memory_bytes(pid) < PEAK_MEMORY_BYTES


def test_a_multipart_login_with_a_file_is_refused(client: httpx.Client) -> None:
    form_token = login_form_token(client)
    answer = client.post(
        "/login",
        data={"token": CONSOLE_TOKEN, "csrf_token": form_token},
        files={"upload": ("big.bin", b"x" * 4096, "application/octet-stream")},
        follow_redirects=False,
    )
    assert answer.status_code == 400
    assert "ccsync_console_session" not in answer.headers.get("set-cookie", "")


def test_a_login_form_with_extra_or_long_fields_is_refused(client: httpx.Client) -> None:
    form_token = login_form_token(client)
    extra = {f"field{n}": "x" for n in range(20)}
    many = client.post("/login", data={"csrf_token": form_token, "token": "x", **extra})
    assert many.status_code == 400
    long = client.post("/login", data={"csrf_token": form_token, "token": "x" * 20_000})
    assert long.status_code in (400, 413)


def test_wrong_logins_from_rotating_forwarded_addresses_are_limited(
    console: tuple[str, int],
) -> None:
    url, _ = console
    # Given a local process that forges X-Forwarded-For on each of eight wrong logins
    statuses = []
    with httpx.Client(base_url=url) as client:
        for n in range(8):
            client.headers["X-Forwarded-For"] = f"203.0.113.{n + 1}"
            statuses.append(log_in(client, token=WRONG_TOKEN).status_code)
    # Then they all count for its own address: limited after the first five
    assert statuses == [401] * MAX_FAILURES + [429] * (8 - MAX_FAILURES)


def test_concurrent_guesses_are_checked_no_more_than_the_limit(console: tuple[str, int]) -> None:
    url, _ = console
    clients = [httpx.Client(base_url=url, timeout=30) for _ in range(30)]
    forms = [login_form_token(client) for client in clients]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def guess(client: httpx.Client, form_token: str) -> None:
        start.wait(timeout=30)
        data = {"token": WRONG_TOKEN, "csrf_token": form_token}
        statuses.append(client.post("/login", data=data).status_code)

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(clients, forms, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for client in clients:
        client.close()
    # Then thirty guesses at once: only the limit's worth had their token checked
    assert sorted(statuses) == [401] * MAX_FAILURES + [429] * (30 - MAX_FAILURES)


def test_a_foreign_host_header_is_refused(client: httpx.Client) -> None:
    # A page of another site rebinding its name to 127.0.0.1 sends its own name as Host
    assert client.get("/login", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/login", headers={"Host": "localhost"}).status_code == 200


def test_behind_a_trusted_proxy_each_operator_is_limited_on_their_own(broker_url: str) -> None:
    # Given the console behind a proxy on 127.0.0.1 that it was told to trust
    config = console_settings(broker_url, console_trusted_proxies="127.0.0.1")
    with serving(config) as url, httpx.Client(base_url=url) as client:
        client.headers["X-Forwarded-For"] = "198.51.100.7"
        for _ in range(MAX_FAILURES):
            assert log_in(client, token=WRONG_TOKEN).status_code == 401
        assert log_in(client).status_code == 429
        # Then another operator behind the same proxy still gets in
        client.headers["X-Forwarded-For"] = "198.51.100.8"
        assert log_in(client).status_code == 303


def test_refused_logins_log_a_short_name_and_a_limited_address_once(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        for _ in range(MAX_FAILURES + 6):
            log_in(client, token=WRONG_TOKEN, operator="mallory" + "x" * 2000)
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    assert len(lines) == MAX_FAILURES + 1
    assert all(len(line) < 200 for line in lines), lines
    assert lines[-1].endswith("result=rate-limited")


def test_logging_in_everywhere_else_out_closes_the_operators_other_sessions(
    broker_url: str,
) -> None:
    fresh_queues(broker_url)
    with serving(console_settings(broker_url)) as url:
        laptop, phone, bob = (httpx.Client(base_url=url) for _ in range(3))
        with laptop, phone, bob:
            for device, name in ((laptop, "alice"), (phone, "alice"), (bob, "bob")):
                assert log_in(device, operator=name).status_code == 303
            # When alice logs in on her phone again, asking to log out everywhere else
            again = phone.post(
                "/login",
                data={
                    "token": CONSOLE_TOKEN,
                    "operator": "alice",
                    "csrf_token": login_form_token(phone),
                    "everywhere": "on",
                },
                follow_redirects=False,
            )
            assert again.status_code == 303
            # Then her laptop's session is gone, her new one and bob's are not
            assert laptop.get("/", follow_redirects=False).status_code == 303
            assert phone.get("/", follow_redirects=False).status_code == 200
            assert bob.get("/", follow_redirects=False).status_code == 200


def test_log_out_everywhere_ends_every_session_of_the_operator(broker_url: str) -> None:
    fresh_queues(broker_url)
    with serving(console_settings(broker_url)) as url:
        laptop, phone = (httpx.Client(base_url=url) for _ in range(2))
        with laptop, phone:
            for device in (laptop, phone):
                assert log_in(device).status_code == 303
            # When alice presses "Log out everywhere" on her phone
            token = csrf_of(phone.get("/").text)
            out = phone.post(
                "/logout",
                data={"csrf_token": token, "everywhere": "on"},
                follow_redirects=False,
            )
            # Then both her sessions are gone
            assert out.status_code == 303
            assert laptop.get("/", follow_redirects=False).status_code == 303
            assert phone.get("/", follow_redirects=False).status_code == 303


def test_a_session_left_unused_ends_though_its_page_keeps_polling(broker_url: str) -> None:
    fresh_queues(broker_url)
    config = replace(console_settings(broker_url), session_idle_seconds=2)
    with serving(config) as url, httpx.Client(base_url=url) as client:
        assert log_in(client).status_code == 303
        # While the operator opens pages, the session stays
        for _ in range(3):
            time.sleep(1)
            assert client.get("/", follow_redirects=False).status_code == 200
        # While only the page polls the API, it does not
        for _ in range(3):
            time.sleep(1)
            client.get("/api/depths")
        assert client.get("/", follow_redirects=False).status_code == 303
