"""Issue 25, item 6: the deadline a call's fence sets is carried to the send.

A PATCH is never sent when it could be answered after the relationship's lease ends (the lock
could be another event's by then), and one sent gets no answer after that end. The API is the
sandbox on a real socket, the ledger real Redis, the token endpoint a local server of the test.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.unit.test_apply import RecordingForwarder, attempt
from tests.unit.test_async_calls import read_request, server
from worker.cloudcockpit.client import LEASE_EXPIRED, Change, CloudCockpitClient
from worker.cloudcockpit.connection import AsyncConnection
from worker.cloudcockpit.streams import AsyncioTransport
from worker.cloudcockpit.tokens import ClientCredentialsToken, StaticToken
from worker.exceptions import ApiUnavailable, LeaseExpired
from worker.processing.applier import BUSY_RETRY_SECONDS, Applier, Outcome
from worker.processing.backoff import RetryPolicy
from worker.processing.ledger import Hold, Ledger
from worker.sandbox import SandboxServer
from worker.sandbox.state import DEFAULT_STATIC_TOKEN

pytestmark = pytest.mark.usefixtures("clean_environment")

#: Each phase of a request (pool, connect, write, read): a request lasts 0.8 s at most.
PHASE_SECONDS = 0.2
#: The relationship's lease, from right before the fence.
LEASE_SECONDS = 2.0
#: How long the token endpoint takes to answer: past the lease.
SLOW_TOKEN_SECONDS = 2.5


class SlowTokenEndpoint(ThreadingHTTPServer):
    """Answers every token request with the sandbox's static token, after ``delay`` seconds."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.asked = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.asked += 1
                time.sleep(endpoint.delay)
                body = json.dumps({"access_token": DEFAULT_STATIC_TOKEN, "expires_in": 3600})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/oauth2/v2.0/token"


@pytest.fixture
def token_endpoint() -> Iterator[Callable[[float], SlowTokenEndpoint]]:
    started: list[SlowTokenEndpoint] = []

    def start(delay: float) -> SlowTokenEndpoint:
        endpoint = SlowTokenEndpoint(delay)
        threading.Thread(target=endpoint.serve_forever, args=(0.05,), daemon=True).start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.shutdown()
        endpoint.server_close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as running:
        yield running


@pytest.fixture
def http_client() -> Iterator[Callable[[], httpx.Client]]:
    """httpx clients, closed afterwards."""
    clients: list[httpx.Client] = []

    def make() -> httpx.Client:
        clients.append(httpx.Client(timeout=10.0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def client_credentials(http: httpx.Client, token_url: str) -> ClientCredentialsToken:
    return ClientCredentialsToken(
        http,
        token_url=token_url,
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        scope="scope",
    )


def quick_connection() -> AsyncConnection:
    return AsyncConnection(
        transport=AsyncioTransport(verify=httpx.create_ssl_context(), keepalive_expiry=5.0),
        timeout=httpx.Timeout(PHASE_SECONDS),
        headers={},
    )


def send_first_attempt(applier: Applier) -> Outcome:
    """The caller's steps for one first attempt, its call made in an event loop."""
    call = applier.prepare(attempt(1))
    call.hold = applier.ledger.acquire(call.relationship, call.attempt.event.event_id, None)

    async def fence(hold: Hold, lease_seconds: float) -> None:
        applier.ledger.fence(hold, lease_seconds=lease_seconds)

    async def no_budget(tenant: str) -> None:
        pass

    async def main() -> None:
        async with quick_connection() as connection:
            await applier.send_async(call, connection=connection, fence=fence, budget=no_budget)

    asyncio.run(main())
    applier.leave_all([call])
    if call.failure is not None:
        assert isinstance(call.failure, LeaseExpired)
        assert call.failure.error == LEASE_EXPIRED
    return applier.conclude(call)


@pytest.mark.parametrize("token_seconds", [0.0, SLOW_TOKEN_SECONDS])
def test_given_a_token_that_comes_after_the_lease_then_the_patch_is_not_sent(
    token_seconds: float,
    sandbox: SandboxServer,
    token_endpoint: Callable[[float], SlowTokenEndpoint],
    make_ledger: Callable[..., Ledger],
    http_client: Callable[[], httpx.Client],
) -> None:
    # Given a call whose relationship is leased for 2 s, and a token endpoint that answers
    # at once, or only after the lease has ended
    tokens = token_endpoint(token_seconds)
    forwarder = RecordingForwarder()
    applier = Applier(
        api=CloudCockpitClient(
            http_client(),
            base_url=sandbox.url,
            tokens=client_credentials(http_client(), tokens.url),
        ),
        ledger=make_ledger(),
        forwarder=forwarder,
        policy=RetryPolicy((1.0,), jitter=0.0),
        rng=random.Random(3),
        call_lease_seconds=LEASE_SECONDS,
    )

    # When the call is made
    outcome = send_first_attempt(applier)

    # Then a token in time lets the PATCH through; a token too late sends nothing: the event
    # comes back soon, its attempt unspent
    with sandbox.control() as control:
        patches = [e for e in control.journal() if e["method"] == "PATCH"]
    assert tokens.asked == 1
    if token_seconds < LEASE_SECONDS:
        assert outcome is Outcome.APPLIED
        assert len(patches) == 1
        return
    assert patches == [], "a PATCH was sent after its lease ended"
    assert outcome is Outcome.DEFERRED
    ((again, delay),) = forwarder.retries
    assert (again.number, delay) == (1, BUSY_RETRY_SECONDS)


def test_given_an_answer_that_trickles_past_the_lease_then_the_call_ends_with_the_lease(
    http_client: Callable[[], httpx.Client],
) -> None:
    # Given a server that answers a header line every 0.1 s (each read within its timeout)
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n")
        for n in range(100):
            await asyncio.sleep(0.1)
            writer.write(f"X-Trickle-{n}: x\r\n".encode())

    change = Change(
        tenant="portal.example.com",
        customer_id=uuid.uuid4(),
        reseller_id=None,
        internal_identifier="ERP-1",
        correlation_id=uuid.uuid4(),
    )

    async def main() -> float:
        async with server(trickle) as url, quick_connection() as connection:
            api = CloudCockpitClient(http_client(), base_url=url, tokens=StaticToken("t"))
            started = time.monotonic()
            with pytest.raises(ApiUnavailable, match="before the call's lease ended") as failed:
                await api.set_internal_identifier_async(
                    connection, change, lease_ends=started + LEASE_SECONDS
                )
            assert failed.value.unsettled
            return time.monotonic() - started

    # When a call is sent under a lease of 2 s
    took = asyncio.run(main())

    # Then it ends when the lease does, not when the server stops trickling (10 s)
    assert LEASE_SECONDS <= took < LEASE_SECONDS + 0.5
