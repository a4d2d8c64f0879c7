"""``ccsync ingest`` read as an attacker would (issue 27): a batch built to amplify costs little and
holds nobody else up, nothing is read before the credentials are checked, the server bounds its
connections, and every answer is the one the contract promises, with its security headers.

No worker runs here, so whatever ingest publishes stays in ``ccsync.events`` to be counted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection

from tests.conftest import rabbitmqctl, throwaway_vhost
from tests.integration.events import native, structured
from tests.integration.ingest_process import TOKEN, IngestProcess, signed_headers
from tests.integration.producer import queue_depth
from worker.amqp.topology import declare_topology
from worker.constants import EVENTS_QUEUE
from worker.http_serving import MAX_CONNECTIONS

pytestmark = pytest.mark.usefixtures("clean_queues")

JSON = {"Content-Type": "application/json"}
BEARER = {"Authorization": f"Bearer {TOKEN}", **JSON}
BATCH = {**BEARER, "Content-Type": "application/cloudevents-batch+json"}
#: What the issue measured: a batch of 300,000 empty items, under the default 1 MiB limit.
AMPLIFYING_ITEMS = 300_000
#: The issue's bounds.
REFUSED_WITHIN_SECONDS = 3.0
ANSWER_UNDER_BYTES = 64 * 1024
BESIDE_WITHIN_SECONDS = 1.5
RSS_UNDER_BYTES = 300 * 1024 * 1024
#: Headers every answer of ingest carries, whatever its status.
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "cache-control")


def _env(broker_url: str) -> dict[str, str]:
    return {"CCSYNC_BROKER_URL": broker_url, "CCSYNC_INGEST_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def ingest(broker_url: str) -> Iterator[IngestProcess]:
    with IngestProcess(_env(broker_url)) as process:
        yield process


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/events", content=body, headers=headers, timeout=60)


def _timed_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = _post(url, body, headers)
    return answer, time.monotonic() - started


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:2000]
    assert answer.headers["content-type"] == "application/problem+json", answer.text[:2000]
    document: dict[str, Any] = answer.json()
    assert document["status"] == status
    assert document["title"] and document["detail"]
    return document


def _peak_rss_bytes(pid: int) -> int:
    """The most memory the process ever had resident (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmHWM line")


def test_given_a_batch_of_300000_empty_items_then_refused_fast_and_small_while_others_are_served(
    ingest: IngestProcess, broker_url: str
) -> None:
    # Given an authenticated batch of 300,000 empty items, under 1 MiB
    body = b"[" + b",".join([b"{}"] * AMPLIFYING_ITEMS) + b"]"
    assert len(body) < 1_048_576

    # And ingest warm (its first request pays for what it loads once)
    small = json.dumps(native()).encode()
    assert _post(ingest.url, small, BEARER).status_code == 202

    # When it is posted, and small requests are posted one after the other while it is in flight
    latencies: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        big = pool.submit(_timed_post, ingest.url, body, BATCH)
        while not big.done() or not latencies:
            beside, took = _timed_post(ingest.url, small, BEARER)
            assert beside.status_code == 202, beside.text
            latencies.append(took)
        answer, elapsed = big.result()

    # Then the batch is refused within 3 s in under 64 KB, each small request was answered within
    # 1.5 s, ingest stayed under 300 MB, and nothing of the batch was published
    assert "at most" in _problem(answer, 413)["detail"]
    figures = (
        f"refused in {elapsed:.2f} s with {len(answer.content)} bytes; small requests answered "
        f"in at most {max(latencies):.2f} s; ingest peaked at {_peak_rss_bytes(ingest.pid)} bytes"
    )
    assert elapsed < REFUSED_WITHIN_SECONDS, figures
    assert len(answer.content) < ANSWER_UNDER_BYTES, figures
    assert max(latencies) < BESIDE_WITHIN_SECONDS, figures
    assert _peak_rss_bytes(ingest.pid) < RSS_UNDER_BYTES, figures
    assert queue_depth(broker_url, EVENTS_QUEUE) == 1 + len(latencies)


def _open(ingest: IngestProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", ingest.port), timeout=5)


def _head(headers: dict[str, str], *, length: int) -> bytes:
    """The request line and headers of a POST announcing ``length`` bytes of body."""
    lines = ["POST /v1/events HTTP/1.1", "Host: ingest", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status_line(connection: socket.socket) -> str:
    """The first line of the answer; ``socket.timeout`` when none comes within 5 s."""
    received = b""
    while b"\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize(
    "credentials",
    [
        JSON,
        {"Authorization": f"Bearer {TOKEN}-not", **JSON},
        {**JSON, **signed_headers(b"{}", timestamp=int(time.time()) - 3600)},
    ],
    ids=["none", "wrong token", "stale signature"],
)
def test_given_no_valid_credential_then_401_before_the_body_is_sent(
    ingest: IngestProcess, credentials: dict[str, str]
) -> None:
    # Given a request announcing a body of almost 1 MiB, with no credential that could pass
    with _open(ingest) as connection:
        # When only its headers are sent
        connection.sendall(_head(credentials, length=1_000_000))

        # Then it is answered 401 at once: the server does not wait for the body
        try:
            status = _status_line(connection)
        except TimeoutError:
            pytest.fail("no answer within 5 s: ingest waits for the body before checking")
    assert status == "HTTP/1.1 401 Unauthorized"


def test_given_more_connections_than_the_limit_then_the_next_request_is_refused_503(
    ingest: IngestProcess,
) -> None:
    # Given as many open connections as the server serves at once
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(_open(ingest))

        # When one more request arrives
        answer = _post(ingest.url, json.dumps(native()).encode(), BEARER)

    # Then it is refused at once instead of adding to what the server holds
    assert answer.status_code == 503


def test_given_a_queue_at_its_length_limit_then_503_problem_with_retry_after() -> None:
    # Given a vhost whose ccsync.events refuses every publish (a length limit of 0)
    with throwaway_vhost("ccsync-ingest-full-") as url:
        with Connection(url) as connection:
            declare_topology(connection)
        vhost = url.rsplit("/", 1)[1]
        policy = json.dumps({"max-length": 0, "overflow": "reject-publish"})
        rabbitmqctl("set_policy", "-p", vhost, "full", f"^{EVENTS_QUEUE}$", policy)
        with IngestProcess(_env(url)) as ingest:
            # When valid events are posted (a quorum queue takes one past its limit, then refuses)
            _post(ingest.url, json.dumps(native()).encode(), BEARER)
            answer = _post(ingest.url, json.dumps(native()).encode(), BEARER)

    # Then 503 problem details ask the producer to come back later
    assert "refused" in _problem(answer, 503)["detail"]
    assert int(answer.headers["retry-after"]) > 0


def _lone_surrogate_batch() -> bytes:
    item = json.loads(structured(native()))
    return json.dumps([item]).encode().replace(b'"data": {', b'"data": {"note": "\\ud800", ', 1)


ANSWERS: dict[str, tuple[str, str, bytes, dict[str, str], int]] = {
    "405": ("GET", "/v1/events", b"", {}, 405),
    "404": ("POST", "/v1/nothing-here", b"{}", BEARER, 404),
    "401": ("POST", "/v1/events", b"{}", JSON, 401),
    "400 lone surrogate": ("POST", "/v1/events", _lone_surrogate_batch(), BATCH, 400),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_given_a_request_answered_an_error_then_a_problem_document_with_security_headers(
    ingest: IngestProcess, broker_url: str, case: str
) -> None:
    method, path, body, headers, status = ANSWERS[case]

    answer = httpx.request(method, f"{ingest.url}{path}", content=body, headers=headers, timeout=15)

    _problem(answer, status)
    assert [name for name in SECURITY_HEADERS if name not in answer.headers] == []
    assert queue_depth(broker_url, EVENTS_QUEUE) == 0


def test_given_an_accepted_request_then_its_answer_has_the_security_headers(
    ingest: IngestProcess,
) -> None:
    answer = _post(ingest.url, json.dumps(native()).encode(), BEARER)

    assert answer.status_code == 202, answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert [name for name in SECURITY_HEADERS if name not in answer.headers] == []
