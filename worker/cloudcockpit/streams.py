"""httpx's sockets on asyncio itself: an httpcore network backend without anyio in between.

httpx's async transport reaches its sockets through anyio, which wraps every read and write in
a cancel scope and a timer and asks the socket, with a system call, whether an idle connection
is still open before each request. In a worker whose event loop makes every call, that
bookkeeping cost about as much CPU as the rest of the request (docs/concurrency.md).
This backend keeps httpx and httpcore (requests, HTTP/1.1, answers, exceptions) and only
replaces the lowest layer with an ``asyncio.Protocol``: a read waits for ``data_received``, a
write hands the bytes to the transport, each with its timeout as one timer of the loop.

Failures are raised as httpcore's own exceptions, which httpx maps as usual: a connection that
could not be made is ``ConnectError``/``ConnectTimeout`` (the request never left), one broken
after is ``ReadError``/``WriteError``, and timeouts are ``ReadTimeout``/``WriteTimeout``.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

#: Seconds a connection attempt to one of a host's addresses has before the next address is
#: tried alongside it (RFC 8305's "Connection Attempt Delay"): a black-holed first address costs
#: this, not the whole connect timeout.
HAPPY_EYEBALLS_DELAY_SECONDS = 0.25

#: Socket options as httpcore passes them: (level, option, value) or (level, option, None, size).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _Protocol(asyncio.Protocol):
    """Bytes received, end of stream and write pauses of one connection, for ``_Stream``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.closed = False
        self.error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._wake_reader()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake_reader()
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    def pause_writing(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def readable(self, timeout: float | None) -> None:
        """Until bytes or the end of the stream arrive; ``httpcore.ReadTimeout`` after
        ``timeout`` seconds."""
        self._reader = asyncio.get_running_loop().create_future()
        await _within(self._reader, timeout, httpcore.ReadTimeout)

    async def drained(self, timeout: float | None) -> None:
        """Until the transport takes more bytes; ``httpcore.WriteTimeout`` after ``timeout``."""
        if self._writer is not None and not self._writer.done():
            await _within(asyncio.shield(self._writer), timeout, httpcore.WriteTimeout)


async def _within(
    waiter: asyncio.Future[None], timeout: float | None, error: type[httpcore.TimeoutException]
) -> None:
    if timeout is None:
        await waiter
        return
    loop = asyncio.get_running_loop()

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(error(f"timed out after {timeout}s"))

    timer = loop.call_later(timeout, expire)
    try:
        await waiter
    finally:
        timer.cancel()


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.received and not protocol.closed:
            await protocol.readable(timeout)
        if protocol.received:
            data = bytes(protocol.received[:max_bytes])
            del protocol.received[:max_bytes]
            return data
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._protocol.closed or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        await self._protocol.drained(timeout)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
        except (OSError, ssl.SSLError, ConnectionError, RuntimeError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        assert isinstance(transport, asyncio.Transport)
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            # Asked of an idle connection before it is used again: readable means the server
            # closed it (or sent what nobody asked for). What the loop has seen already answers
            # without a system call; otherwise the socket is asked, as anyio's backend does.
            if self._protocol.received or self._protocol.closed:
                return True
            return _socket_readable(self._transport.get_extra_info("socket"))
        return None


def _socket_readable(sock: Any) -> bool:
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections as ``asyncio.Protocol`` transports of the running loop.

    A host of several addresses is connected to as RFC 8305 says (asyncio's happy eyeballs):
    the next address is tried ``HAPPY_EYEBALLS_DELAY_SECONDS`` after the last, or as soon as it
    failed, and the first connection made wins; all within the one connect timeout.
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local_addr = None if local_address is None else (local_address, 0)
        return await _connected(
            lambda protocol: loop.create_connection(
                lambda: protocol,
                host,
                port,
                local_addr=local_addr,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_SECONDS,
            ),
            timeout,
            socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await _connected(
            lambda protocol: loop.create_unix_connection(lambda: protocol, path),
            timeout,
            socket_options,
        )

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    opening: Callable[[_Protocol], Awaitable[tuple[asyncio.BaseTransport, Any]]],
    timeout: float | None,
    socket_options: Iterable[SocketOption] | None,
) -> _Stream:
    """The stream of the connection ``opening`` makes for a new protocol within ``timeout``; one
    that could not be made raises httpcore's ``ConnectTimeout`` or ``ConnectError``."""
    protocol = _Protocol()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await opening(protocol)
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(str(exc) or "connect timed out") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    _apply(transport, socket_options)
    assert isinstance(transport, asyncio.Transport)
    return _Stream(transport, protocol)


def _apply(transport: asyncio.BaseTransport, options: Iterable[SocketOption] | None) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    for option in options or ():
        if sock is not None:
            sock.setsockopt(*option)


class _OneConnection:
    """The pool of a client that makes one request at a time: a single connection, made anew
    once closed, expired or for another origin.

    httpcore's pool serves many requests over many connections, and pays for it on every
    request (a lock, an event per request, a shielded release); a lane of the worker sends its
    requests one after another, so a connection of its own is all it needs. A request made
    while another is under way raises ``RuntimeError`` and leaves the other alone.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, keepalive_expiry: float | None) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._backend = AsyncioBackend()
        self._connection: httpcore.AsyncHTTPConnection | None = None
        # The connection's (scheme, host, port) as the request's URL gives them: comparing them
        # costs less than building the request's httpcore.Origin on every request.
        self._address: tuple[bytes, bytes, int | None] | None = None

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        url = request.url
        address = (url.scheme, url.host, url.port)
        connection = self._connection
        if (
            connection is None
            or address != self._address
            or connection.is_closed()
            or connection.has_expired()
        ):
            connection = await self._replace(url.origin)
            self._address = address
        try:
            return await connection.handle_async_request(request)
        except httpcore.ConnectionNotAvailable:
            raise RuntimeError(
                "a request was made while another was under way on the same client: make "
                "one connection per concurrent caller (make_async_connection)"
            ) from None

    async def _replace(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        if self._connection is not None:
            await self._connection.aclose()
        self._connection = httpcore.AsyncHTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._backend,
        )
        return self._connection

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = None

    async def __aenter__(self) -> _OneConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's async transport for a caller that makes one request at a time
    (``AsyncConnection``), over one connection on ``AsyncioBackend``.

    httpx builds its connection pool itself and takes no network backend, so what serves its
    requests is replaced here (``_OneConnection``); httpx's own request and response handling,
    and the tracing that wraps it, stay. ccsync sets no proxy on this transport; a proxy from
    the environment gets httpx's own transport (``make_async_connection``).
    """

    def __init__(self, *, verify: ssl.SSLContext, keepalive_expiry: float | None) -> None:
        super().__init__(verify=verify)
        # httpx types its pool as one of httpcore's; _OneConnection has the same methods.
        self._pool = _OneConnection(  # type: ignore[assignment]
            ssl_context=verify, keepalive_expiry=keepalive_expiry
        )
