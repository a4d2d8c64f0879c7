"""A real ``ccsync ingest`` as a child process, and a TCP proxy that can cut it off the broker."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Self

from tests.support import free_port
from worker.testing import ChildProcess

#: A bearer token as the settings want one: random, long enough.
TOKEN = secrets.token_urlsafe(32)
#: A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64.
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    message_id: str | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, computed here from the specification; a new
    ``webhook-id`` unless one is given (ingest answers a repeated id without publishing)."""
    message_id = message_id or f"msg-{uuid.uuid4()}"
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{message_id}.{stamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{signature}",
    }


def token_or_signature_env(broker_url: str) -> dict[str, str]:
    """The environment of an ingest that accepts ``TOKEN`` and requests signed with ``SECRET``."""
    return {
        "CCSYNC_BROKER_URL": broker_url,
        "CCSYNC_INGEST_TOKEN": TOKEN,
        "CCSYNC_INGEST_SECRET": SECRET,
    }


class IngestProcess(ChildProcess):
    """``python -m worker ingest`` on a free port; its output kept for failure messages."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "worker", "ingest", "--port", str(self.port)],
            env=env,
            ready_marker="Uvicorn running on",
            name="ccsync ingest",
        )


class TcpProxy:
    """Forwards a local port to ``target``; ``cut`` drops every connection and refuses new ones
    (accepted, then closed at once) until ``restore``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            doomed, self._sockets = self._sockets, []
        for end in doomed:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def restore(self) -> None:
        self._open.set()

    def __exit__(self, *exc_info: object) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
