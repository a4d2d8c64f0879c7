"""The call out: ``PATCH /v1/Customers/{customerId}/internal-identifier`` through httpx."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from worker.cloudcockpit.answers import (
    NO_USABLE_ANSWER,
    describe_transport_error,
    raise_for_answer,
)
from worker.cloudcockpit.connection import (
    AsyncConnection,
    environment_proxy,
    longest_request_seconds,
    proxy_variable,
)
from worker.cloudcockpit.streams import AsyncioTransport
from worker.cloudcockpit.tokens import ClientCredentialsToken, StaticToken, TokenSource
from worker.exceptions import (
    ApiRejected,
    ApiUnavailable,
    ConfigurationError,
    LeaseExpired,
    TokenRejected,
    TransientFailure,
)
from worker.observability import metrics, tracing
from worker.settings import HttpTimeouts, Settings

USER_AGENT = "ccsync/0.1"
#: The most requests one ``set_internal_identifier`` makes or waits for: the PATCH, and again
#: after a 401; before each, a token fetch of its own and one of another thread it waits on.
REQUESTS_PER_CHANGE = 6
#: Threads that fetch and renew tokens for the calls of an event loop: of their own, so that a
#: slow token endpoint never queues behind the loop's DNS lookups in its default executor, nor
#: they behind it. One fetches at a time (``ClientCredentialsToken``); the other may wait on it.
TOKEN_THREADS = 2
#: Why a call was not sent: the relationship's lease would have ended before its answer.
LEASE_EXPIRED = "lease expired before the call was sent"


def longest_call_seconds(timeouts: HttpTimeouts) -> float:
    """The longest one ``set_internal_identifier`` can last: ``REQUESTS_PER_CHANGE`` requests,
    each as long as ``longest_request_seconds``. A call given its lease's end never lasts
    longer than that lease."""
    return REQUESTS_PER_CHANGE * longest_request_seconds(_httpx_timeout(timeouts))


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Certificates are always checked; a private CA (a proxy's) is added, never a bypass.

    Worth sharing between clients: making one loads the CA bundle, which a worker with a client
    per thread would otherwise do once per thread at startup.
    """
    if settings.api_ca_file:
        try:
            return ssl.create_default_context(cafile=settings.api_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"CLOUDCOCKPIT_CA_FILE: {settings.api_ca_file} holds no certificate that can be "
                f"read ({exc}); name a PEM file of the CA to trust, or unset it"
            ) from None
    return httpx.create_ssl_context()


def make_http_client(
    settings: Settings,
    *,
    transport: httpx.BaseTransport | None = None,
    max_connections: int = 100,
    tls: ssl.SSLContext | None = None,
) -> httpx.Client:
    """The one way ccsync makes an httpx client: explicit timeouts, bounded pool, TLS verified."""
    return httpx.Client(
        transport=transport,
        timeout=_timeout(settings),
        limits=_limits(max_connections),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        verify=tls or tls_context(settings),
    )


def make_async_connection(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tls: ssl.SSLContext | None = None,
    proxy: str | None = None,
) -> AsyncConnection:
    """``make_http_client`` for an event loop, for one request at a time: the same timeouts,
    headers and TLS, one connection, its socket on asyncio directly (``streams``), or through
    ``proxy`` (``lane_connections`` passes the one the environment names).

    The worker gives each of its calls in flight a connection of its own (docs/concurrency.md):
    a pool shared by hundreds of calls looks at every connection on each request.
    """
    if transport is None:
        tls = tls or tls_context(settings)
        limits = _limits(1)
        transport = (
            AsyncioTransport(verify=tls, keepalive_expiry=limits.keepalive_expiry)
            if proxy is None
            else httpx.AsyncHTTPTransport(verify=tls, limits=limits, proxy=proxy)
        )
    return AsyncConnection(
        transport=transport, timeout=_timeout(settings), headers={"User-Agent": USER_AGENT}
    )


def lane_connections(settings: Settings) -> Callable[[], AsyncConnection]:
    """What makes the connection of each of the worker's lanes: ``make_async_connection`` with
    the API's CA and the proxy the environment names (``environment_proxy``), checked here.

    Call it at start: a lane that cannot be set up is the worker's fault, and no event should
    pay for it. Building a transport does no I/O, so the one built here shows that every lane's
    will build. Raises ``ConfigurationError`` naming the variable (``CLOUDCOCKPIT_CA_FILE``,
    ``HTTPS_PROXY``, ...) whose value the lanes cannot use.
    """
    tls = tls_context(settings)
    proxy = environment_proxy(settings.base_url)

    def make() -> AsyncConnection:
        return make_async_connection(settings, tls=tls, proxy=proxy)

    try:
        make()
        if proxy is not None and not httpx.URL(proxy).host:
            raise ValueError("it names no host")
    except (ValueError, ImportError, httpx.InvalidURL) as exc:
        raise ConfigurationError(
            f"{proxy_variable(settings.base_url)} names no proxy the worker can use for "
            f"{settings.base_url} ({exc}); set it to a proxy's URL, such as "
            "http://proxy.example:3128, or unset it"
        ) from None
    return make


def _timeout(settings: Settings) -> httpx.Timeout:
    return _httpx_timeout(settings.timeouts)


def _httpx_timeout(timeouts: HttpTimeouts) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
    )


def _limits(max_connections: int) -> httpx.Limits:
    """A pool of ``max_connections``, each of them kept alive between calls."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class ClientPerThread:
    """An httpx client for each thread that calls, made on first use.

    Threads sharing one httpx client queue on its pool's lock; with a client each, every thread
    keeps its own call in flight.
    """

    def __init__(self, make: Callable[[], httpx.Client]) -> None:
        self._make = make
        self._local = threading.local()

    def client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make()
        return client


def make_token_source(settings: Settings, client: httpx.Client) -> TokenSource:
    settings.require_api_credentials()
    if settings.token is not None:
        return StaticToken(settings.token.get_secret_value())
    assert settings.client_id is not None and settings.client_secret is not None
    return ClientCredentialsToken(
        client,
        token_url=settings.token_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret.get_secret_value(),
        scope=settings.scope,
    )


@dataclass(frozen=True, kw_only=True)
class Change:
    """What one PATCH sets: a relationship's internal identifier (None clears it), under an
    X-Correlation-Id that stays the same for every attempt of the same change."""

    tenant: str
    customer_id: uuid.UUID
    reseller_id: uuid.UUID | None
    internal_identifier: str | None
    correlation_id: uuid.UUID

    @property
    def path(self) -> str:
        return f"/v1/Customers/{self.customer_id}/internal-identifier"

    @property
    def body(self) -> dict[str, str | None]:
        return {
            "internalIdentifier": self.internal_identifier,
            "resellerId": str(self.reseller_id) if self.reseller_id else None,
        }


@dataclass(frozen=True)
class Reading:
    """A relationship read back: ``found`` False when CloudCockpit knows no such customer (404)
    or no such relationship of it (403); ``internal_identifier`` is then None."""

    found: bool
    internal_identifier: str | None
    status: int


class CloudCockpitClient:
    """Applies one change; returns when CloudCockpit accepted it, raises what to do otherwise."""

    def __init__(
        self, http: httpx.Client | ClientPerThread, *, base_url: str, tokens: TokenSource
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        # Threads are started on the first fetch an event loop asks for, never before.
        self._token_threads = ThreadPoolExecutor(
            max_workers=TOKEN_THREADS, thread_name_prefix="ccsync-token"
        )

    def set_internal_identifier(self, change: Change, *, lease_ends: float | None = None) -> None:
        """Raises ``LeaseExpired``, sending nothing, where a PATCH could not be answered before
        ``lease_ends`` (monotonic seconds), if given: a token renewal took too long."""
        url = self._base_url + change.path
        token = self._tokens.token()
        response = self._patch(url, change=change, token=token, lease_ends=lease_ends)
        if response.status_code == 401:
            # One renewal per call: a token rejected right after renewal means wrong credentials.
            renewed = self._tokens.renew(token)
            response = self._patch(url, change=change, token=renewed, lease_ends=lease_ends)
            if response.status_code == 401:
                raise TokenRejected("HTTP 401 with a renewed token", 401)
        raise_for_answer(response)

    async def set_internal_identifier_async(
        self, connection: AsyncConnection, change: Change, *, lease_ends: float
    ) -> None:
        """``set_internal_identifier`` in an event loop, through ``connection``: the same
        request, the same renewal once after a 401, the same answers. A token fetch or renewal
        runs in a thread of the client's own (``TOKEN_THREADS``), so the loop never waits on the
        token endpoint; the token source still lets one fetch run at a time and keeps a valid
        token in use meanwhile.

        ``lease_ends`` (monotonic seconds, the loop's clock) bounds the call: a PATCH that could
        not be answered before it is not sent (``LeaseExpired``), and one sent gets no answer
        after it (``ApiUnavailable``, unsettled)."""
        url = self._base_url + change.path
        token = self._tokens.cached()
        if token is None:
            token = await self._in_token_thread(self._tokens.token)
        headers = _headers(change, token)
        response = await _patch_async(
            connection, url, body=change.body, headers=headers, lease_ends=lease_ends
        )
        if response.status_code == 401:
            renewed = await self._in_token_thread(self._tokens.renew, token)
            headers = _headers(change, renewed)
            response = await _patch_async(
                connection, url, body=change.body, headers=headers, lease_ends=lease_ends
            )
            if response.status_code == 401:
                raise TokenRejected("HTTP 401 with a renewed token", 401)
        raise_for_answer(response)

    def _in_token_thread(self, fetch: Callable[..., str], *args: str) -> asyncio.Future[str]:
        """``fetch(*args)`` in a token thread, in the caller's context (its trace), as
        ``asyncio.to_thread`` would run it in the loop's default executor."""
        run = functools.partial(contextvars.copy_context().run, fetch, *args)
        return asyncio.get_running_loop().run_in_executor(self._token_threads, run)

    def answers(
        self, *, tenant: str, customer_id: uuid.UUID, reseller_id: uuid.UUID | None
    ) -> bool:
        """Whether CloudCockpit is back: reading the customer gets any answer but 5xx, 429 or 401.

        A read, not a write: probing during an outage must not change anything.
        """
        url = f"{self._base_url}/v1/Customers/{customer_id}"
        params = {"resellerId": str(reseller_id)} if reseller_id else {}
        try:
            token = self._tokens.token()
            response = self._get(url, params=params, tenant=tenant, token=token)
            if response.status_code == 401:
                response = self._get(
                    url, params=params, tenant=tenant, token=self._tokens.renew(token)
                )
        except (TransientFailure, *NO_USABLE_ANSWER):
            return False
        return response.status_code < 500 and response.status_code not in (401, 429)

    def read_internal_identifier(
        self, *, tenant: str, customer_id: uuid.UUID, reseller_id: uuid.UUID | None
    ) -> Reading:
        """The relationship's internal identifier as CloudCockpit holds it:
        ``GET /v1/Customers/{customerId}?resellerId=``.

        A 404 (no such customer) or 403 (no such relationship) is a ``Reading`` not ``found``. A
        401 renews the token once; otherwise raises as ``raise_for_answer`` classifies the answer
        (``TransientFailure`` for a 5xx, 429 or no answer, ``ApiRejected`` for another 4xx or a
        200 whose body holds no ``internalIdentifier``).
        """
        url = f"{self._base_url}/v1/Customers/{customer_id}"
        params = {"resellerId": str(reseller_id)} if reseller_id else {}
        token = self._tokens.token()
        try:
            response = self._get(url, params=params, tenant=tenant, token=token)
            if response.status_code == 401:
                renewed = self._tokens.renew(token)
                response = self._get(url, params=params, tenant=tenant, token=renewed)
                if response.status_code == 401:
                    raise TokenRejected("HTTP 401 with a renewed token", 401)
        except NO_USABLE_ANSWER as exc:
            raise describe_transport_error(exc) from None
        if response.status_code in (403, 404):
            return Reading(found=False, internal_identifier=None, status=response.status_code)
        raise_for_answer(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        value = body.get("internalIdentifier", ...) if isinstance(body, dict) else ...
        if not (value is None or isinstance(value, str)):
            raise ApiRejected(
                f"HTTP {response.status_code}: the customer read back has no internalIdentifier",
                response.status_code,
            )
        return Reading(found=True, internal_identifier=value, status=response.status_code)

    def _client(self) -> httpx.Client:
        return self._http.client() if isinstance(self._http, ClientPerThread) else self._http

    def _get(self, url: str, *, params: dict[str, str], tenant: str, token: str) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Tenant": tenant,
            "X-Correlation-Id": str(uuid.uuid4()),
        }
        return self._client().get(url, params=params, headers=headers)

    def _patch(
        self, url: str, *, change: Change, token: str, lease_ends: float | None
    ) -> httpx.Response:
        client = self._client()
        started = time.monotonic()
        if lease_ends is not None:
            _refuse_if_late(started, lease_ends, longest_request_seconds(client.timeout))
        try:
            response = client.patch(url, json=change.body, headers=_headers(change, token))
        except NO_USABLE_ANSWER as exc:
            _observe_call(started, None)
            raise describe_transport_error(exc) from None
        _observe_call(started, response.status_code)
        return response


def _refuse_if_late(now: float, lease_ends: float, longest_request: float) -> None:
    """Raises ``LeaseExpired`` where a request sent ``now`` could be answered after
    ``lease_ends``: the lock it was sent under could be another event's by then."""
    if now + longest_request > lease_ends:
        raise LeaseExpired(LEASE_EXPIRED)


def _observe_call(started: float, status: int | None) -> None:
    """``ccsync_api_request_duration_seconds{status}`` of one PATCH, answered or not."""
    label = metrics.NO_ANSWER if status is None else str(status)
    metrics.API_REQUEST_SECONDS.labels(label).observe(time.monotonic() - started)


def _headers(change: Change, token: str) -> dict[str, str]:
    """The PATCH's headers; ``traceparent``/``tracestate`` of the current trace context, if any
    (the httpx instrumentation, when on, replaces them with its client span's)."""
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Tenant": change.tenant,
        "X-Correlation-Id": str(change.correlation_id),
    }
    tracing.inject(headers)
    return headers


async def _patch_async(
    connection: AsyncConnection,
    url: str,
    *,
    body: dict[str, str | None],
    headers: dict[str, str],
    lease_ends: float,
) -> httpx.Response:
    started = time.monotonic()
    _refuse_if_late(started, lease_ends, connection.longest_request_seconds)
    try:
        # The phases' timeouts end it in time, unless the answer trickles in.
        async with asyncio.timeout_at(lease_ends):
            response = await connection.patch(url, body=body, headers=headers)
    except NO_USABLE_ANSWER as exc:
        _observe_call(started, None)
        raise describe_transport_error(exc) from None
    except TimeoutError:
        _observe_call(started, None)
        failure = ApiUnavailable("no answer from CloudCockpit before the call's lease ended")
        failure.unsettled = True
        raise failure from None
    _observe_call(started, response.status_code)
    return response
