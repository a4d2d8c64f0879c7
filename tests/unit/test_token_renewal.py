"""Token renewal (issue 15, item 6): a valid token keeps serving while its renewal fails; one
thread renews, with backoff, against a real local token endpoint over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from worker.cloudcockpit.tokens import (
    FIRST_RENEWAL_BACKOFF_SECONDS,
    MAX_RENEWAL_BACKOFF_SECONDS,
    RENEW_MARGIN_SECONDS,
    ClientCredentialsToken,
)
from worker.exceptions import TokenUnavailable

pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.timeout(60)]

LIFETIME = 3599.0
RENEW_AT = LIFETIME - RENEW_MARGIN_SECONDS


class TokenServer:
    """A token endpoint on a real socket: answers ``status`` (200 hands out tok-1, tok-2, …),
    after ``delay`` seconds, and counts every request it receives."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        self.issued = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with server._lock:
                    server.requests += 1
                    status, delay = server.status, server.delay
                    if status == 200:
                        server.issued += 1
                    number = server.issued
                time.sleep(delay)
                body = (
                    {
                        "token_type": "Bearer",
                        "expires_in": LIFETIME,
                        "access_token": f"tok-{number}",
                    }
                    if status == 200
                    else {"error": "temporarily_unavailable"}
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/tenant/oauth2/v2.0/token"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class FakeClock:
    """Stands in for the ``time`` module inside worker.cloudcockpit.tokens."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[TokenServer]:
    endpoint = TokenServer()
    yield endpoint
    endpoint.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("worker.cloudcockpit.tokens.time", fake)
    return fake


@pytest.fixture
def tokens(server: TokenServer) -> Iterator[ClientCredentialsToken]:
    with httpx.Client(timeout=10) as http:
        yield ClientCredentialsToken(
            http, token_url=server.url, client_id="id", client_secret="secret", scope="scope"
        )


def ask_at_once(tokens: ClientCredentialsToken, threads: int) -> list[str | BaseException]:
    """``tokens.token()`` from many threads released together; each one's answer or error."""
    barrier = threading.Barrier(threads)
    results: list[str | BaseException] = []
    lock = threading.Lock()

    def ask() -> None:
        barrier.wait(timeout=10)
        try:
            answer: str | BaseException = tokens.token()
        except BaseException as exc:  # collected and asserted by the caller
            answer = exc
        with lock:
            results.append(answer)

    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    return results


def test_given_a_token_in_its_renewal_window_and_the_endpoint_failing_then_calls_keep_it(
    server: TokenServer, clock: FakeClock, tokens: ClientCredentialsToken
) -> None:
    # Given a token inside its renewal window, and a token endpoint answering 500
    start = clock.now
    assert tokens.token() == "tok-1"
    server.status = 500
    clock.now = start + RENEW_AT + 1

    # When many calls ask for a token while the renewal keeps failing
    answers = [tokens.token() for _ in range(50)]

    # Then every call still gets the cached token, which is valid for minutes more
    assert answers == ["tok-1"] * 50
    # and the failed renewal was tried once, not on every call
    assert server.requests == 2

    # When the backoff has passed, it is tried once more, and the pause then doubles
    clock.now += FIRST_RENEWAL_BACKOFF_SECONDS
    assert tokens.token() == "tok-1"
    assert server.requests == 3
    clock.now += FIRST_RENEWAL_BACKOFF_SECONDS
    assert tokens.token() == "tok-1"
    assert server.requests == 3
    clock.now += FIRST_RENEWAL_BACKOFF_SECONDS
    assert tokens.token() == "tok-1"
    assert server.requests == 4

    # When the endpoint answers again, the next try renews and the backoff is forgotten
    server.status = 200
    clock.now += 4 * FIRST_RENEWAL_BACKOFF_SECONDS
    assert tokens.token() == "tok-2"
    assert server.requests == 5


def test_given_renewal_failing_until_the_token_expires_then_calls_fail_and_back_off(
    server: TokenServer, clock: FakeClock, tokens: ClientCredentialsToken
) -> None:
    # Given a token whose renewal failed all through its window
    start = clock.now
    assert tokens.token() == "tok-1"
    server.status = 503
    clock.now = start + RENEW_AT
    while clock.now < start + LIFETIME - 1:
        assert tokens.token() == "tok-1"
        clock.now += 1
    tries_in_window = server.requests - 1
    # the backoff doubled and was capped: a handful of tries in the five minutes, not 300
    assert 3 <= tries_in_window <= 2 + RENEW_MARGIN_SECONDS / MAX_RENEWAL_BACKOFF_SECONDS * 2

    # When it has expired, Then a call fails, as TokenUnavailable
    clock.now = start + LIFETIME
    with pytest.raises(TokenUnavailable):
        tokens.token()
    # and calls right after it do not each ask the endpoint again
    before = server.requests
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            tokens.token()
    assert server.requests == before


def test_given_a_token_in_its_renewal_window_then_one_thread_renews_and_others_do_not_wait(
    server: TokenServer, clock: FakeClock, tokens: ClientCredentialsToken
) -> None:
    # Given a token inside its renewal window and a slow token endpoint
    start = clock.now
    assert tokens.token() == "tok-1"
    clock.now = start + RENEW_AT + 1
    server.delay = 1.0

    # When 20 threads ask at once
    results = ask_at_once(tokens, 20)

    # Then one request renews the token, and the other threads used the valid one meanwhile
    assert server.requests == 2
    assert sorted(map(str, results)) == ["tok-1"] * 19 + ["tok-2"]
    assert tokens.token() == "tok-2"


def test_given_no_token_and_a_failing_endpoint_then_many_threads_make_one_request(
    server: TokenServer, clock: FakeClock, tokens: ClientCredentialsToken
) -> None:
    # Given no token yet and a token endpoint answering 500 slowly
    server.status = 500
    server.delay = 0.3

    # When 20 threads ask at once
    results = ask_at_once(tokens, 20)

    # Then they all fail with TokenUnavailable after one request, not one each
    assert len(results) == 20
    assert all(isinstance(result, TokenUnavailable) for result in results)
    assert server.requests == 1


def test_given_a_401_and_a_failing_endpoint_then_the_renewal_backs_off_too(
    server: TokenServer, clock: FakeClock, tokens: ClientCredentialsToken
) -> None:
    # Given a token CloudCockpit rejected, and a token endpoint answering 500
    rejected = tokens.token()
    server.status = 500

    # When calls renew it over and over
    for _ in range(10):
        with pytest.raises(TokenUnavailable):
            tokens.renew(rejected)

    # Then the endpoint was asked once until the backoff passed
    assert server.requests == 2
    server.status = 200
    clock.now += FIRST_RENEWAL_BACKOFF_SECONDS
    assert tokens.renew(rejected) == "tok-2"
