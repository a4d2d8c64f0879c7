"""A stand-in for Sentry on a local socket: records every envelope sentry-sdk POSTs to it.

``SENTRY_DSN=sink.dsn`` points a worker at it; the SDK posts to ``/api/<project>/envelope/``,
compressed as its ``Content-Encoding`` says (gzip, or br when brotli is installed).
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Envelope:
    """One POST as received, decompressed: its raw text is what a leak check must search."""

    path: str
    raw: bytes
    header: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]

    def events(self) -> list[dict[str, Any]]:
        """The error events in it (items of type ``event``), parsed."""
        return [json.loads(payload) for head, payload in self.items if head.get("type") == "event"]


def parse_envelope(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Sentry's envelope format: a header line, then per item a header line and its payload."""
    first, _, rest = raw.partition(b"\n")
    header = json.loads(first) if first.strip() else {}
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item_header = json.loads(line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append((item_header, payload))
    return header, items


def decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # sentry-sdk sends br only if it exists

        return bytes(brotli.decompress(body))
    raise ValueError(f"unknown Content-Encoding {encoding!r}")


class _Handler(BaseHTTPRequestHandler):
    server: _SinkServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""

    def do_POST(self) -> None:
        body = self._read_body()
        try:
            raw = decompress(body, self.headers.get("Content-Encoding", ""))
            header, items = parse_envelope(raw)
        except Exception as exc:  # recorded, so that the test fails saying what arrived
            self.server.sink.failures.append(f"{self.path}: {type(exc).__name__}: {exc}")
            raw, header, items = body, {}, []
        self.server.sink.record(Envelope(self.path, raw, header, items))
        answer = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sink: SentrySink) -> None:
        self.sink = sink
        super().__init__(("127.0.0.1", 0), _Handler)


class SentrySink:
    def __init__(self) -> None:
        self._server = _SinkServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="sentry-sink", daemon=True
        )
        self._lock = threading.Lock()
        self._envelopes: list[Envelope] = []
        self.failures: list[str] = []

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self._server.server_address[1]}/1"

    def record(self, envelope: Envelope) -> None:
        with self._lock:
            self._envelopes.append(envelope)

    @property
    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def events(self) -> list[dict[str, Any]]:
        return [event for envelope in self.envelopes for event in envelope.events()]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
