"""A throwaway highly available Redis: a primary, one replica and three Sentinels (quorum 2), each
a redis-server of its own on free ports with its own directory. The primary can be killed with
SIGKILL; Sentinel promotes the replica; the old primary started again comes back as a replica.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

import redis

from tests.support import ServerGroup, free_port, wait_for_port

#: The service name the Sentinels monitor.
SERVICE = "ccsync"
#: Milliseconds without an answer before a Sentinel deems the primary down.
DOWN_AFTER_MS = 2000
#: Sentinels that must agree the primary is down before one fails over.
QUORUM = 2


class _Server:
    def __init__(self, directory: Path, argv: list[str]) -> None:
        self.directory = directory
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port(port, timeout=10):
            raise RuntimeError(f"{self.argv[0]} did not listen on {port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class SentinelRedis(ServerGroup):
    """``url`` is the ``redis+sentinel://`` URL of the group (database 0)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH")
        self._data: list[_Server] = []
        self._sentinels: list[_Server] = []
        super().__init__("ccsync-sentinel-")
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _data_server(self, index: int) -> _Server:
        port = self.data_ports[index]
        directory = self.root / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        config = directory / "redis.conf"
        if not config.exists():
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                "appendonly yes",
                "appendfsync always",
                'save ""',
                # A replica syncs at once rather than after Redis's default 5 s wait for others.
                "repl-diskless-sync-delay 0",
                f"dir {directory}",
            ]
            if index:
                lines.append(f"replicaof 127.0.0.1 {self.data_ports[0]}")
            config.write_text("\n".join(lines) + "\n")
        return _Server(directory, ["redis-server", str(config)])

    def start(self) -> Self:
        for index, port in enumerate(self.data_ports):
            server = self._data_server(index)
            server.start(port)
            self._data.append(server)
        for port in self.sentinel_ports:
            directory = self.root / f"sentinel-{port}"
            directory.mkdir()
            config = directory / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.data_ports[0]} {QUORUM}\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinel = _Server(directory, ["redis-server", str(config), "--sentinel"])
            sentinel.start(port)
            self._sentinels.append(sentinel)
        self._await_replica()
        return self

    def primary_port(self) -> int:
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                host_port = client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
                client.close()
                return int(host_port[1])
        raise RuntimeError("no Sentinel answers")

    def kill_primary(self) -> int:
        """SIGKILL the primary's redis-server; returns its port."""
        port = self.primary_port()
        self._data[self.data_ports.index(port)].kill()
        return port

    def await_failover(self, old_port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.primary_port() == old_port:
            if time.monotonic() > deadline:
                raise TimeoutError("Sentinel promoted no replica")
            time.sleep(0.2)

    def restart(self, port: int) -> None:
        """Start the killed server again: the Sentinels make it a replica of the new primary."""
        index = self.data_ports.index(port)
        server = self._data_server(index)
        server.start(port)
        self._data[index] = server
        self._await_replica()

    def _await_replica(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                primary = redis.Redis(port=self.primary_port(), socket_timeout=1)
                info = primary.info("replication")
                primary.close()
                # A replica still loading its first copy counts as connected but confirms no
                # WAIT: the ledger's writes would fail until it is online.
                states = [v.get("state") for k, v in info.items() if k.startswith("slave")]
                if info.get("role") == "master" and "online" in states:
                    return
            time.sleep(0.2)
        raise TimeoutError("no replica caught up with the primary")

    def stop_servers(self) -> None:
        for server in [*self._sentinels, *self._data]:
            server.kill()
