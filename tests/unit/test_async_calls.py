"""First attempts' calls in an event loop: httpx on asyncio (``streams``), the async PATCH with
its token handling, and the caller's batched fences."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import redis

from tests.support import REDIS_URL
from worker.cloudcockpit.client import (
    Change,
    CloudCockpitClient,
    lane_connections,
    make_async_connection,
)
from worker.cloudcockpit.connection import environment_proxy
from worker.cloudcockpit.tokens import ClientCredentialsToken, StaticToken
from worker.exceptions import RelationshipBusy, TokenRejected
from worker.processing.applier import CALL_LEASE_SECONDS
from worker.processing.budget import RateBudget, Reservation
from worker.processing.ledger import Hold
from worker.runtime.caller import Caller
from worker.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_environment")

CUSTOMER = uuid.UUID("3f0e6f43-3b0d-4b1c-9a56-0a7a2b1c1d11")
ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


def settings(**overrides: Any) -> Settings:
    return Settings(base_url="http://127.0.0.1", token="t", **overrides)


@asynccontextmanager
async def server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    *,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 for the test's own HTTP/1.1 answers; its URL. With ``tls``,
    an HTTPS one, named ``localhost`` (as the test certificates name it)."""

    async def handled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            writer.transport.abort()

    listening = await asyncio.start_server(handled, "127.0.0.1", 0, ssl=tls)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}" if tls is None else f"https://localhost:{port}"
    finally:
        listening.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def test_given_keep_alive_then_one_connection_serves_many_calls() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(ANSWER)

    async def main() -> list[int]:
        async with server(handle) as url, make_async_connection(settings()) as connection:
            return [
                (await connection.patch(f"{url}/x", body={"a": 1})).status_code for _ in range(5)
            ]

    assert asyncio.run(main()) == [204] * 5
    assert connections == 1


def test_given_the_server_closed_an_idle_connection_then_the_next_call_takes_a_new_one() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()  # keep-alive refused after the answer

    async def main() -> list[int]:
        async with server(handle) as url, make_async_connection(settings()) as connection:
            first = await connection.patch(f"{url}/x", body={})
            await asyncio.sleep(0.05)  # the close reaches the client before its next call
            second = await connection.patch(f"{url}/x", body={})
            return [first.status_code, second.status_code]

    assert asyncio.run(main()) == [204, 204]
    assert connections == 2


def test_given_a_second_call_during_one_then_it_fails_and_the_first_is_answered() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.1)
        writer.write(ANSWER)
        await writer.drain()

    async def main() -> list[object]:
        async with server(handle) as url, make_async_connection(settings()) as connection:
            first = asyncio.create_task(connection.patch(f"{url}/x", body={}))
            await asyncio.sleep(0.02)  # the first request is on the wire
            second = await asyncio.gather(
                connection.patch(f"{url}/x", body={}), return_exceptions=True
            )
            return [(await first).status_code, type(second[0])]

    assert asyncio.run(main()) == [204, RuntimeError]


def test_given_a_failed_connect_then_the_next_call_connects_anew() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()

    async def main() -> int:
        async with make_async_connection(settings()) as connection:
            with pytest.raises(httpx.ConnectError):
                await connection.patch(f"http://127.0.0.1:{port}/x", body={})
            async with server(handle) as url:
                return (await connection.patch(f"{url}/x", body={})).status_code

    assert asyncio.run(main()) == 204


def test_given_no_answer_within_the_read_timeout_then_read_timeout() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        async with (
            server(handle) as url,
            make_async_connection(settings(http_timeout=0.2)) as connection,
        ):
            await connection.patch(f"{url}/x", body={})

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())
    assert time.monotonic() - started < 2


def test_given_the_server_drops_the_connection_before_answering_then_no_answer() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    async def main() -> None:
        async with server(handle) as url, make_async_connection(settings()) as connection:
            await connection.patch(f"{url}/x", body={})

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        asyncio.run(main())


def test_given_nothing_listens_then_connect_error_the_call_never_left() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        async with make_async_connection(settings()) as connection:
            await connection.patch(f"http://127.0.0.1:{port}/x", body={})

    with pytest.raises(httpx.ConnectError):
        asyncio.run(main())


@contextmanager
def black_hole(host: str, port: int) -> Iterator[None]:
    """``host:port`` answers no connection attempt: a listening socket whose queue of accepted
    connections is full, of which Linux drops every further SYN (the client waits, as for a
    firewall that drops)."""
    listener = socket.socket()
    queued: list[socket.socket] = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        for _ in range(8):  # fill the queue until a connection attempt goes unanswered
            attempt = socket.socket()
            queued.append(attempt)
            attempt.settimeout(0.3)
            try:
                attempt.connect((host, port))
            except TimeoutError:
                break
        else:
            raise AssertionError(f"{host}:{port} still accepts connections: no black hole")
        yield
    finally:
        for sock in [*queued, listener]:
            sock.close()


class TwoAddressLoop(asyncio.SelectorEventLoop):
    """An event loop whose resolver gives ``cc.example.test`` two addresses, as DNS does for a
    host with several: first 127.0.0.2, then 127.0.0.1."""

    async def getaddrinfo(self, host: Any, port: Any, **kwargs: Any) -> Any:
        if host != "cc.example.test":
            return await super().getaddrinfo(host, port, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))
            for address in ("127.0.0.2", "127.0.0.1")
        ]


def test_given_a_black_holed_first_address_then_the_next_one_is_tried_well_within_the_timeout() -> (
    None
):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()

    async def main() -> tuple[int, float]:
        async with server(handle) as url:
            port = int(url.rsplit(":", 1)[1])
            # Given the API's first address black-holed, its second answering
            with black_hole("127.0.0.2", port):
                async with make_async_connection(settings()) as connection:
                    started = time.monotonic()
                    answer = await connection.patch(f"http://cc.example.test:{port}/x", body={})
                    return answer.status_code, time.monotonic() - started

    with asyncio.Runner(loop_factory=TwoAddressLoop) as runner:
        status, seconds = runner.run(main())

    # Then the call is answered through the second, long before the connect timeout (5 s)
    assert status == 204
    assert seconds < 1.5, seconds


def without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_the_proxy_of_the_environment_is_the_one_for_the_scheme_unless_no_proxy_lists_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_proxies(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")

    assert environment_proxy("https://api.cloudcockpit.com") == "http://proxy.example:3128"
    assert environment_proxy("http://api.cloudcockpit.com") == "http://all.example:3128"
    assert environment_proxy("https://internal.example/v1") is None


def test_given_a_proxy_in_the_environment_then_the_call_goes_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_proxies(monkeypatch)
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(ANSWER)
        await writer.drain()

    async def main() -> int:
        async with server(handle) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy)
            api = Settings(base_url="http://cc.example.test", token="t")
            connection = make_async_connection(api, proxy=environment_proxy(api.base_url))
            async with connection:
                answer = await connection.patch("http://cc.example.test/x", body={"a": 1})
                return answer.status_code

    assert asyncio.run(main()) == 204
    assert received[0].startswith(b"PATCH http://cc.example.test/x HTTP/1.1\r\n")
    assert received[0].endswith(b'{"a":1}')


def test_given_a_proxy_without_a_scheme_then_it_is_read_as_httpx_reads_it_an_http_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given HTTP_PROXY=host:port, which httpx's own clients take for http://host:port
    without_proxies(monkeypatch)
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(ANSWER)
        await writer.drain()

    async def main() -> int:
        async with server(handle) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.removeprefix("http://"))
            api = Settings.model_validate({"CLOUDCOCKPIT_BASE_URL": "http://cc.example.test"})
            async with lane_connections(api)() as connection:
                answer = await connection.patch("http://cc.example.test/x", body={"a": 1})
                return answer.status_code

    # Then a lane's call goes through that proxy
    assert asyncio.run(main()) == 204
    assert received[0].startswith(b"PATCH http://cc.example.test/x HTTP/1.1\r\n")


def _change_through(
    api: CloudCockpitClient,
    answer: Callable[[httpx.Request], Awaitable[httpx.Response]],
    *,
    internal_identifier: str | None,
    correlation_id: uuid.UUID,
) -> None:
    """One change of ``CUSTOMER`` under tenant portal.example.com, ``answer`` answering it."""

    async def main() -> None:
        transport = httpx.MockTransport(answer)
        async with make_async_connection(settings(), transport=transport) as connection:
            change = Change(
                tenant="portal.example.com",
                customer_id=CUSTOMER,
                reseller_id=None,
                internal_identifier=internal_identifier,
                correlation_id=correlation_id,
            )
            lease_ends = time.monotonic() + CALL_LEASE_SECONDS
            await api.set_internal_identifier_async(connection, change, lease_ends=lease_ends)

    asyncio.run(main())


def test_the_async_patch_is_the_sync_one_and_a_401_renews_the_token_once() -> None:
    seen: list[httpx.Request] = []
    tokens: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401 if request.headers["Authorization"] == "Bearer old" else 204)

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        tokens.append(threading.current_thread().name)
        return httpx.Response(200, json={"access_token": "old" if len(tokens) == 1 else "new"})

    source = ClientCredentialsToken(
        httpx.Client(transport=httpx.MockTransport(token_endpoint)),
        token_url="https://login.example.test/token",
        client_id="id",
        client_secret="secret",
        scope="scope",
    )
    api = CloudCockpitClient(httpx.Client(), base_url="https://cc.example.test/", tokens=source)
    correlation = uuid.uuid4()

    _change_through(api, answer, internal_identifier="ERP-1", correlation_id=correlation)

    assert [r.headers["Authorization"] for r in seen] == ["Bearer old", "Bearer new"]
    last = seen[-1]
    assert last.method == "PATCH"
    assert str(last.url) == f"https://cc.example.test/v1/Customers/{CUSTOMER}/internal-identifier"
    assert last.headers["X-Tenant"] == "portal.example.com"
    assert last.headers["X-Correlation-Id"] == str(correlation)
    assert last.read() == b'{"internalIdentifier":"ERP-1","resellerId":null}'
    # Both fetches ran off the event loop's thread, in the client's own token threads, not in
    # the loop's default executor, where DNS lookups run.
    assert len(tokens) == 2
    assert all(name.startswith("ccsync-token") for name in tokens), tokens


def test_given_a_401_after_renewal_too_then_token_rejected() -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    api = CloudCockpitClient(httpx.Client(), base_url="https://x.test", tokens=StaticToken("s"))

    with pytest.raises(TokenRejected):
        _change_through(api, answer, internal_identifier=None, correlation_id=uuid.uuid4())


def test_cached_gives_the_token_only_while_no_fetch_is_due() -> None:
    answers = iter([{"access_token": "a", "expires_in": 3599}])
    source = ClientCredentialsToken(
        httpx.Client(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=next(answers)))
        ),
        token_url="https://login.example.test/token",
        client_id="id",
        client_secret="secret",
        scope="scope",
    )
    assert source.cached() is None  # none yet: ``token`` must fetch
    assert source.token() == "a"
    assert source.cached() == "a"
    assert StaticToken("s").cached() == "s"


TENANT = "portal.example.com"


class FencingLedger:
    """Counts ``fence_all`` round trips; refuses the holds named in ``lost``."""

    def __init__(self, lost: set[str]) -> None:
        self.batches: list[int] = []
        self.lost = lost
        self.reachable = True
        # No presence: the calls are not cut.
        self.presence = None

    def fence_all(self, holds: list[Hold], *, lease_seconds: float) -> list[Any]:
        time.sleep(0.02)  # a round trip, during which more lanes ask
        self.batches.append(len(holds))
        return [RelationshipBusy("lost") if hold.token in self.lost else None for hold in holds]


class FencingApplier:
    def __init__(self, ledger: FencingLedger, budget: RateBudget | None = None) -> None:
        self.ledger = ledger
        self.budget = budget
        self.fenced: dict[str, str] = {}
        self.budget_waited: dict[str, float] = {}

    async def send_async(self, call: Any, *, connection: Any, fence: Any, budget: Any) -> None:
        started = time.monotonic()
        await budget(TENANT)
        self.budget_waited[call.hold.token] = time.monotonic() - started
        try:
            await fence(call.hold, 10.0)
            self.fenced[call.hold.token] = "fenced"
        except RelationshipBusy:
            self.fenced[call.hold.token] = "refused"


class FakeCall:
    """A call as the caller sees it: a hold to fence, on the live lane."""

    backfill = False

    def __init__(self, token: str) -> None:
        self.hold = Hold(["l", "a"], token=token, linger_value="", stored=None, lingering_until=0)


def fencing_caller(applier: FencingApplier, *, on_called: Callable[[Any, Any], None]) -> Caller:
    """A caller of 16 lanes over ``applier``, its loop running in a thread of its own."""
    caller = Caller(
        applier=applier,  # type: ignore[arg-type]
        lanes=16,
        make_connection=lambda: None,  # type: ignore[arg-type, return-value]
        on_called=on_called,
        on_lost=lambda call, message: None,
    )
    threading.Thread(target=caller.run, args=(lambda: None,), daemon=True).start()
    return caller


def test_the_caller_fences_many_calls_in_few_round_trips_each_with_its_own_verdict() -> None:
    ledger = FencingLedger(lost={"hold-3"})
    applier = FencingApplier(ledger)
    called: list[str] = []
    done = threading.Event()

    def on_called(call: Any, message: Any) -> None:
        called.append(call.hold.token)
        if len(called) == 40:
            done.set()

    caller = fencing_caller(applier, on_called=on_called)

    for number in range(40):
        caller.put(FakeCall(f"hold-{number}"), object())  # type: ignore[arg-type]
    assert done.wait(10)
    assert sorted(called) == sorted(f"hold-{n}" for n in range(40))
    assert applier.fenced["hold-3"] == "refused"
    assert sum(value == "fenced" for value in applier.fenced.values()) == 39
    assert sum(ledger.batches) == 40
    assert len(ledger.batches) < 10  # 16 lanes at a time: a round trip serves many


class CountingBudget(RateBudget):
    """A real budget that counts its round trips."""

    def __init__(self, client: redis.Redis, *, per_second: float, prefix: str) -> None:
        super().__init__(client, per_second=per_second, prefix=prefix)
        self.batches: list[int] = []

    def reserve_all(self, tenants: Sequence[str]) -> list[Reservation]:
        self.batches.append(len(tenants))
        return super().reserve_all(tenants)


def test_the_caller_waits_for_each_calls_budget_before_its_fence_lanes_asking_together(
    ledger_prefix: str,
) -> None:
    # Given a budget of 100 calls a second and 16 lanes
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    budget = CountingBudget(client, per_second=100, prefix=ledger_prefix)
    applier = FencingApplier(FencingLedger(lost=set()), budget)
    called: list[float] = []
    done = threading.Event()

    def on_called(call: Any, message: Any) -> None:
        called.append(time.monotonic())
        if len(called) == 40:
            done.set()

    caller = fencing_caller(applier, on_called=on_called)

    # When 40 calls are put at once
    started = time.monotonic()
    for number in range(40):
        caller.put(FakeCall(f"hold-{number}"), object())  # type: ignore[arg-type]
    assert done.wait(10)
    client.close()

    # Then they took 0.4 s at least (100 a second); the lanes that asked together were
    # answered in one round trip; and each call waited for its slot before its fence
    assert max(called) - started >= 0.38
    assert sum(budget.batches) == 40
    assert max(budget.batches) >= 8
    assert max(applier.budget_waited.values()) >= 0.14  # 16 lanes: 15 slots ahead of the last
    assert sum(value == "fenced" for value in applier.fenced.values()) == 40


def test_under_a_light_load_the_last_lane_to_finish_takes_the_next_call() -> None:
    # Given 16 lanes and one event at a time
    made: list[object] = []
    called = threading.Semaphore(0)

    class Sending:
        ledger = FencingLedger(lost=set())
        budget = None

        async def send_async(self, call: Any, *, connection: Any, fence: Any, budget: Any) -> None:
            pass

    def make_connection() -> Any:
        made.append(object())
        return made[-1]

    caller = Caller(
        applier=Sending(),  # type: ignore[arg-type]
        lanes=16,
        make_connection=make_connection,
        on_called=lambda call, message: called.release(),
        on_lost=lambda call, message: None,
    )
    threading.Thread(target=caller.run, args=(lambda: None,), daemon=True).start()
    for _ in range(10):
        caller.put(object(), object())  # type: ignore[arg-type]
        assert called.acquire(timeout=5)
        time.sleep(0.01)

    # Then one lane made every call, over one kept-alive connection
    assert len(made) == 1
