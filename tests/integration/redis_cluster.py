"""A throwaway Redis Cluster: three primaries, no replicas, each a redis-server of its own on free
ports (its client port and its cluster bus port) with its own directory, made one cluster by
``redis-cli --cluster create``. Nothing is persisted; ``close`` kills the servers and removes
the directories.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Self

import redis

from tests.support import ServerGroup, free_port, wait_for_port
from worker.testing import stop_process

#: Primaries of the cluster: the slots are cut in as many ranges.
PRIMARIES = 3
#: Seconds the cluster may take to agree on its slots after ``--cluster create``.
READY_SECONDS = 30


class RedisCluster(ServerGroup):
    """``url`` is the ``redis+cluster://`` URL naming every primary."""

    def __init__(self, primaries: int = PRIMARIES) -> None:
        for program in ("redis-server", "redis-cli"):
            if shutil.which(program) is None:
                raise RuntimeError(f"{program} is not on PATH: the Redis Cluster tests need it")
        self._processes: list[subprocess.Popen[bytes]] = []
        super().__init__("ccsync-redis-cluster-")
        self.ports = [free_port() for _ in range(primaries)]
        # Redis puts the bus on port + 10000 unless told: that one may be taken, or past 65535.
        self.bus_ports = [free_port() for _ in range(primaries)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> Self:
        try:
            for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
                self._start_node(port, bus_port)
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self._await_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, port: int, bus_port: int) -> None:
        directory = self.root / str(port)
        directory.mkdir()
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus_port),
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._processes.append(process)
        if not wait_for_port(port, timeout=10, process=process):
            raise RuntimeError(f"redis-server did not listen on {port}")

    def _await_ready(self) -> None:
        """Until every node says cluster_state:ok and knows every primary."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if all(self._ready(port) for port in self.ports):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the Redis Cluster on {self.ports} did not reach cluster_state:ok")

    def _ready(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            info = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        finally:
            client.close()
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.ports)}" in text

    def stop_servers(self) -> None:
        for process in self._processes:
            stop_process(process, timeout=10)
        self._processes.clear()
