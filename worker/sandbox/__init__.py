"""A local stand-in for CloudCockpit on a real socket (contract section 8).

Stdlib ``ThreadingHTTPServer``: a thread per keep-alive connection, so 64+ clients waiting on
injected latency cost threads, not throughput. Each response goes out in one write with Nagle off,
because a header write followed by a body write stalls on delayed ACKs (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import FrameType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

from worker.sandbox.control_client import SandboxControl, SandboxControlError
from worker.sandbox.controls import CONTROL_PREFIX, handle_control
from worker.sandbox.faults import FaultStep, RandomFaults, RateLimit
from worker.sandbox.protocol import ApiRequest, Reply, error_reply, status_phrase
from worker.sandbox.state import CustomerSpec, SandboxOptions, SandboxState

__all__ = [
    "CustomerSpec",
    "FaultStep",
    "RandomFaults",
    "RateLimit",
    "SandboxControl",
    "SandboxControlError",
    "SandboxOptions",
    "SandboxServer",
    "SandboxState",
    "run_sandbox",
]

MAX_BODY_BYTES: Final = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ccsync-sandbox"
    disable_nagle_algorithm = True
    # Idle keep-alive connections are closed after this; clients' pools expire theirs sooner.
    timeout = 75
    server: _SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a line per request would cost more than the request itself."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        received_at = time.time()
        body = self._read_body()
        if body is None:
            return
        target = self.path if self.path.startswith("/") else urlsplit(self.path).path or "/"
        path, _, query_string = target.partition("?")
        query = parse_qs(query_string, keep_blank_values=True) if query_string else {}
        state = self.server.state
        try:
            if path.startswith(CONTROL_PREFIX):
                self._send(
                    handle_control(state, method=self.command, path=path, query=query, body=body)
                )
                return
            request = ApiRequest(self.command, target, path, query, self._header_map(), body)
            plan = state.admit(request)
            if plan.delay_s > 0:
                time.sleep(plan.delay_s)
            reply = state.respond(request, plan)
            # Recorded before the reply leaves, so whoever got the reply finds it in the journal.
            state.record(request, plan, reply, received_at=received_at, responded_at=time.time())
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send(error_reply(500, "The sandbox failed; see its output.", correlation_id=None))
            return
        if reply is None:
            self._drop()
        else:
            self._send(reply)

    def _header_map(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key, value = name.lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a malformed one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self._reject(400, "Invalid Content-Length.")
            return None
        if length > MAX_BODY_BYTES:
            self._reject(413, "The request body is too large.")
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._reject(400, "Invalid chunked body.")
                return None
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                self._reject(413, "The request body is too large.")
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers carry nothing the sandbox uses
        return b"".join(chunks)

    def _reject(self, status: int, description: str) -> None:
        self.close_connection = True
        self._send(error_reply(status, description, correlation_id=None))

    def _send(self, reply: Reply) -> None:
        lines = [
            f"HTTP/1.1 {reply.status} {status_phrase(reply.status)}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if reply.content_type:
            lines.append(f"Content-Type: {reply.content_type}")
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if reply.status not in (204, 304):
            lines.append(f"Content-Length: {len(reply.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + reply.body)
        except OSError:
            self.close_connection = True  # the client gave up first (a timeout fault, usually)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 drops SYNs when 64 clients connect at once

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # clients going away is routine here, not worth a traceback
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """Ends keep-alive connections, whose threads would otherwise go on serving."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class SandboxServer:
    """A sandbox served from a daemon thread; ``port=0`` picks a free port (see ``url``)."""

    def __init__(
        self, options: SandboxOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state = SandboxState(options)
        self.host = host
        self.port = port
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def options(self) -> SandboxOptions:
        return self.state.options

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._httpd.server_name, self._httpd.server_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Self:
        if self._httpd is None:
            httpd = _SandboxHTTPServer((self.host, self.port), self.state)
            self._thread = threading.Thread(
                target=httpd.serve_forever, args=(0.1,), name="ccsync-sandbox", daemon=True
            )
            self._httpd = httpd
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_open_connections()
        if thread is not None:
            thread.join(timeout=5)

    def control(self, timeout: float = 10.0) -> SandboxControl:
        return SandboxControl(self.url, timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_sandbox(host: str, port: int, options: SandboxOptions) -> None:
    """Serves until SIGINT or SIGTERM; call from the main thread (signal handlers live there)."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SandboxServer(options, host=host, port=port) as server:
            print(f"ccsync sandbox listening on {server.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
