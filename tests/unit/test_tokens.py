"""Bearer tokens (docs/cloudcockpit-api.md): the client-credentials flow and the static token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from worker.cloudcockpit.client import make_http_client, make_token_source
from worker.cloudcockpit.tokens import (
    FIRST_RENEWAL_BACKOFF_SECONDS,
    RENEW_MARGIN_SECONDS,
    ClientCredentialsToken,
    StaticToken,
)
from worker.exceptions import ConfigurationError, TokenUnavailable, TransientFailure
from worker.settings import Settings

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "cloudcockpit-api.md"
CLIENT_ID = "0f1e2d3c-client"
CLIENT_SECRET = "s3cr3t~Value.With+Chars&="
TOKEN_URL = "https://login.example.test/tenant-id/oauth2/v2.0/token"
SCOPE = "api://example/.default"


pytestmark = pytest.mark.usefixtures("clean_environment")


class TokenEndpoint:
    """A scripted token endpoint: hands out tok-1, tok-2, … and records every request."""

    def __init__(self, expires_in: float = 3599, delay: float = 0.0) -> None:
        self.requests: list[httpx.Request] = []
        self.expires_in = expires_in
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
        if self.delay:
            time.sleep(self.delay)
        return httpx.Response(
            200,
            json={
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "ext_expires_in": self.expires_in,
                "access_token": f"tok-{number}",
            },
        )


class FakeClock:
    """Stands in for the ``time`` module inside worker.cloudcockpit.tokens."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def token_source(
    handler: Callable[[httpx.Request], httpx.Response],
) -> ClientCredentialsToken:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return ClientCredentialsToken(
        http, token_url=TOKEN_URL, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, scope=SCOPE
    )


# --- the token request -----------------------------------------------------------------------


def test_the_token_request_is_a_form_post_with_exactly_the_documented_fields() -> None:
    endpoint = TokenEndpoint()
    settings = Settings(CLOUDCOCKPIT_CLIENT_ID=CLIENT_ID, CLOUDCOCKPIT_CLIENT_SECRET=CLIENT_SECRET)
    http = make_http_client(settings, transport=httpx.MockTransport(endpoint))

    assert make_token_source(settings, http).token() == "tok-1"

    (request,) = endpoint.requests
    assert request.method == "POST"
    assert str(request.url) == settings.token_url
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in request.headers
    assert parse_qs(request.content.decode("ascii"), strict_parsing=True) == {
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
        "grant_type": ["client_credentials"],
        "scope": ["api://b92a36a4-feb8-4f47-a69c-29a180aa6d0a/.default"],
    }
    assert settings.token_url in API_DOC.read_text(encoding="utf-8")


def test_given_configured_token_url_and_scope_then_they_are_used() -> None:
    endpoint = TokenEndpoint()

    token_source(endpoint).token()

    (request,) = endpoint.requests
    assert str(request.url) == TOKEN_URL
    assert parse_qs(request.content.decode("ascii"))["scope"] == [SCOPE]


# --- caching and renewal ---------------------------------------------------------------------


def test_given_a_valid_token_then_it_is_cached_across_many_calls() -> None:
    endpoint = TokenEndpoint()
    tokens = token_source(endpoint)

    values = {tokens.token() for _ in range(25)}

    assert values == {"tok-1"}
    assert len(endpoint.requests) == 1


def test_given_a_token_of_3599_s_then_it_is_renewed_the_margin_before_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("worker.cloudcockpit.tokens.time", clock)
    endpoint = TokenEndpoint(expires_in=3599)
    tokens = token_source(endpoint)
    start = clock.now

    assert tokens.token() == "tok-1"
    clock.now = start + 3599 - RENEW_MARGIN_SECONDS - 1
    assert tokens.token() == "tok-1"
    clock.now = start + 3599 - RENEW_MARGIN_SECONDS
    assert tokens.token() == "tok-2"
    assert len(endpoint.requests) == 2


def test_given_a_token_shorter_than_the_margin_then_it_is_cached_yet_renewed_before_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given expires_in 301 (margin 300), Then neither a fetch per call nor an expired token."""
    clock = FakeClock()
    monkeypatch.setattr("worker.cloudcockpit.tokens.time", clock)
    endpoint = TokenEndpoint(expires_in=301)
    tokens = token_source(endpoint)
    start = clock.now

    assert tokens.token() == "tok-1"
    clock.now = start + 10
    assert tokens.token() == "tok-1"
    assert len(endpoint.requests) == 1
    clock.now = start + 300
    assert tokens.token() == "tok-2"


def test_given_the_rejected_token_is_current_when_renewed_then_a_new_one_is_fetched() -> None:
    endpoint = TokenEndpoint()
    tokens = token_source(endpoint)
    first = tokens.token()

    assert tokens.renew(first) == "tok-2"
    assert tokens.token() == "tok-2"
    assert len(endpoint.requests) == 2


def test_given_another_thread_already_renewed_when_renewed_then_no_second_fetch() -> None:
    endpoint = TokenEndpoint()
    tokens = token_source(endpoint)
    stale = tokens.token()
    tokens.renew(stale)

    assert tokens.renew(stale) == "tok-2"
    assert len(endpoint.requests) == 2


def test_given_20_threads_asking_at_once_then_exactly_one_token_request() -> None:
    endpoint = TokenEndpoint(delay=0.05)
    tokens = token_source(endpoint)
    barrier = threading.Barrier(20)
    results: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(tokens.token())
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert results == ["tok-1"] * 20
    assert len(endpoint.requests) == 1


# --- failures of the token endpoint ----------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 500, 503])
def test_given_the_token_endpoint_answers_an_error_then_token_unavailable(status: int) -> None:
    tokens = token_source(lambda request: httpx.Response(status, json={"error": "x"}))

    with pytest.raises(TokenUnavailable) as caught:
        tokens.token()

    assert isinstance(caught.value, TransientFailure)
    assert caught.value.status == status
    assert CLIENT_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError],
)
def test_given_the_token_endpoint_unreachable_then_token_unavailable_without_secrets(
    error: type[httpx.TransportError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error(f"failed: {request.url} {request.content.decode()}", request=request)

    with pytest.raises(TokenUnavailable) as caught:
        token_source(handler).token()

    message = str(caught.value)
    assert error.__name__ in message
    assert CLIENT_SECRET not in message
    assert TOKEN_URL not in message
    assert caught.value.status is None


def test_given_an_answer_that_does_not_decode_then_token_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        garbled = httpx.ByteStream(b'{"access_token": "tok"}')
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=garbled)

    with pytest.raises(TokenUnavailable, match="no usable answer: DecodingError"):
        token_source(handler).token()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3599}),
        httpx.Response(200, json={"token_type": "Bearer", "access_token": None}),
        httpx.Response(200, json={"token_type": "Bearer", "access_token": ""}),
        httpx.Response(200, json=["access_token"]),
        httpx.Response(200, content=b"<html>login</html>"),
        httpx.Response(200, json={"access_token": "tok", "expires_in": "soon"}),
    ],
    ids=["missing", "null", "empty", "json-list", "not-json", "bad-expires-in"],
)
def test_given_an_answer_without_a_usable_access_token_then_token_unavailable(
    answer: httpx.Response,
) -> None:
    tokens = token_source(lambda request: answer)

    with pytest.raises(TokenUnavailable) as caught:
        tokens.token()

    assert "access_token" in str(caught.value)


def test_given_the_token_endpoint_failed_once_then_a_call_after_the_backoff_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("worker.cloudcockpit.tokens.time", clock)
    answers = iter(
        [
            httpx.Response(503),
            httpx.Response(200, json={"access_token": "tok-ok", "expires_in": 3599}),
        ]
    )
    tokens = token_source(lambda request: next(answers))

    with pytest.raises(TokenUnavailable):
        tokens.token()
    clock.now += FIRST_RENEWAL_BACKOFF_SECONDS

    assert tokens.token() == "tok-ok"


# --- static token and the choice of source ---------------------------------------------------


def test_given_a_static_token_then_it_is_returned_and_renewal_keeps_it() -> None:
    tokens = StaticToken("static-1")

    assert tokens.token() == "static-1"
    assert tokens.renew("static-1") == "static-1"


def test_given_a_static_token_setting_then_the_source_is_static_and_calls_nothing() -> None:
    endpoint = TokenEndpoint()
    settings = Settings(CLOUDCOCKPIT_TOKEN="static-1")
    http = make_http_client(settings, transport=httpx.MockTransport(endpoint))

    tokens = make_token_source(settings, http)

    assert isinstance(tokens, StaticToken)
    assert tokens.token() == "static-1"
    assert endpoint.requests == []


def test_given_no_credentials_then_no_token_source_can_be_made() -> None:
    settings = Settings()
    http = make_http_client(settings, transport=httpx.MockTransport(TokenEndpoint()))

    with pytest.raises(ConfigurationError):
        make_token_source(settings, http)
