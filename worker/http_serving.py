"""Serving an ASGI app with uvicorn within the bounds every ccsync HTTP server keeps
(``ccsync ingest``, ``ccsync console``).

uvicorn bounds the connections it serves, the time an idle connection is kept and the size of a
request's head; it has no timeout for reading a request's head or body. A server exposed beyond
this host needs a proxy in front that adds them (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import uvicorn

#: Connections (and requests in flight) a server holds at once; beyond them, each new request is
#: answered 503 at once instead of adding to the server's memory and sockets.
MAX_CONNECTIONS: Final = 64
#: Seconds an idle keep-alive connection stays open after its last answer.
KEEP_ALIVE_SECONDS: Final = 5
#: Bytes of a request's line and headers the server buffers before refusing it (h11's default,
#: stated here so that it is a decision).
MAX_HEAD_BYTES: Final = 16 * 1024
#: Connections waiting to be accepted (the listen backlog).
BACKLOG: Final = 128
#: Seconds requests in flight get to finish at SIGTERM before their connections are closed.
GRACEFUL_SHUTDOWN_SECONDS: Final = 10


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    proxy_headers: bool = False,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, its records going through ccsync's
    logging. ``proxy_headers``: take the client's address and scheme from ``X-Forwarded-*``
    headers sent by a proxy on this host. ``headers`` go with every answer, the server's own
    (503 over ``MAX_CONNECTIONS``, 500 when the app fails before answering) included."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="h11",
        proxy_headers=proxy_headers,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        backlog=BACKLOG,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        headers=list((headers or {}).items()),
        server_header=False,
        log_config=None,
        access_log=False,
    )
