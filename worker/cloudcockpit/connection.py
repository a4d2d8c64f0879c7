"""One caller's way to CloudCockpit in an event loop: httpx's requests and responses over one
transport, without httpx's client around them.

httpx's ``AsyncClient`` merges a base URL, default headers and cookies into every request and
runs it through its auth and redirect machinery; ccsync uses none of them (no redirects are
followed, no cookies are kept, the token is a header), yet that bookkeeping cost about as much
CPU as the transport itself (docs/concurrency.md). ``AsyncConnection`` builds the
``httpx.Request`` and hands it to the transport directly: the same request on the wire, the same
``httpx.Response``, the same exceptions (the transport maps httpcore's), the same timeouts, and
the OpenTelemetry httpx instrumentation still wraps the transport.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from types import TracebackType

import httpx


class AsyncConnection:
    """Sends one request at a time through ``transport``, with ``headers`` on each and
    ``timeout`` bounding each phase (connect, write, read, waiting for the connection).

    Answers are read whole before they are returned; a failure to read one closes it.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport,
        timeout: httpx.Timeout,
        headers: dict[str, str],
    ) -> None:
        self._transport = transport
        self._extensions = {"timeout": timeout.as_dict()}
        self._headers = headers
        #: The longest one request through this connection can last (``longest_request_seconds``).
        self.longest_request_seconds = longest_request_seconds(timeout)

    async def patch(
        self, url: str, *, body: object, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """``PATCH url`` with ``body`` as JSON (encoded as httpx encodes ``json=``)."""
        request = httpx.Request(
            "PATCH",
            url,
            json=body,
            headers=self._headers if headers is None else self._headers | headers,
            extensions=self._extensions,
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def longest_request_seconds(timeout: httpx.Timeout) -> float:
    """The longest one request can last under ``timeout``: each of its phases (waiting for a
    connection, connecting, sending, reading) at its limit.

    httpx bounds each read, not the whole answer: a server trickling its answer byte by byte
    could go on longer, which no phase's timeout prevents.
    """
    phases = (timeout.pool, timeout.connect, timeout.write, timeout.read)
    return sum(phase for phase in phases if phase is not None)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, read as httpx's clients read it:
    ``HTTPS_PROXY`` (or ``HTTP_PROXY``, by the URL's scheme), else ``ALL_PROXY``; none for a
    host that ``NO_PROXY`` lists; a value without a scheme is an ``http://`` proxy
    (``proxy.corp:3128`` is ``http://proxy.corp:3128``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def proxy_variable(url: str) -> str:
    """The variable ``environment_proxy(url)`` was read from, spelt as it is set
    (``https_proxy`` before ``HTTPS_PROXY``, as the standard library reads them)."""
    scheme = urllib.parse.urlsplit(url).scheme
    key = scheme if urllib.request.getproxies().get(scheme) else "all"
    names = (f"{key}_proxy", f"{key.upper()}_PROXY")
    return next((name for name in names if os.environ.get(name)), names[1])
