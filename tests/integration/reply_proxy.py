"""A TCP proxy whose way back can be cut: requests reach the server, its replies wait in the proxy.

What a client sees when a reply is lost on the network after the server acted on the request (a
socket timeout), without disturbing the server itself or anyone else using it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Self

#: Bytes read from a socket at once.
CHUNK_BYTES = 65536


class ReplyProxy:
    """Listens on ``port`` and forwards each connection to ``upstream_port`` on 127.0.0.1.

    ``hold`` keeps the server's replies back (every connection's, new ones too) until ``release``;
    ``reply_delay_seconds`` delays each reply (a slow network, or a server answering late).
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._way_back = threading.Event()
        self._way_back.set()
        self.reply_delay_seconds = 0.0
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._accepting.start()
        return self

    def hold(self) -> None:
        self._way_back.clear()

    def release(self) -> None:
        self._way_back.set()

    def close(self) -> None:
        self._way_back.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=10)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, way_back: bool) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                if way_back:
                    time.sleep(self.reply_delay_seconds)
                    self._way_back.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
