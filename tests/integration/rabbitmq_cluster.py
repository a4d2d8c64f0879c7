"""A throwaway three-node RabbitMQ cluster on this machine, beside (never touching) its main node.

Each node is the packaged ``rabbitmq-server`` (which runs as the ``rabbitmq`` user, sharing its
Erlang cookie) with a node name, ports, data, log, pid and plugins files of its own; the second
and third join the first with ``rabbitmqctl join_cluster``. Nodes can be killed with SIGKILL and
started again (a restarted node rejoins by itself). Everything is killed and removed on ``close``,
at the latest at interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Self

from tests.support import ServerGroup, free_port

#: Seconds a node may take to boot (or to rejoin after a restart).
NODE_START_TIMEOUT = 120.0
#: Seconds any one rabbitmqctl command may take.
RABBITMQCTL_TIMEOUT = 120.0


class ClusterNode:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.node = f"{name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.directory = root / name
        self.pid_file = self.directory / "rabbit.pid"
        self._process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
        }

    def prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
        )
        # No plugins: the management plugin would want the main node's 15672.
        (self.directory / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.directory, "rabbitmq", "rabbitmq")
        for path in self.directory.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")

    def start(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        log = (self.directory / "server.out").open("ab")
        self._process = subprocess.Popen(
            ["rabbitmq-server"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while not self.pid_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node} wrote no pid file; see {self.directory}")
            time.sleep(0.2)
        self.ctl("wait", str(self.pid_file), timeout=NODE_START_TIMEOUT)
        self.ctl("await_startup", timeout=NODE_START_TIMEOUT)

    def ctl(self, *args: str, timeout: float = RABBITMQCTL_TIMEOUT) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)}: {done.stderr}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (and whatever of its launcher is left)."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
            self._process = None


class RabbitCluster(ServerGroup):
    """Three clustered nodes; ``urls`` is the ``;``-separated broker list of the default vhost."""

    def __init__(self, size: int = 3) -> None:
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmq-server and rabbitmqctl must be on PATH")
        self.nodes: list[ClusterNode] = []
        super().__init__("ccsync-cluster-")
        shutil.chown(self.root, "rabbitmq", "rabbitmq")
        tag = uuid.uuid4().hex[:6]
        self.nodes += [ClusterNode(self.root, f"ccsync-{tag}-{i}") for i in range(size)]

    def url(self, node: ClusterNode, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}"

    def urls(self, vhost: str = "") -> str:
        return ";".join(self.url(node, vhost) for node in self.nodes)

    def start(self) -> Self:
        for node in self.nodes:
            node.prepare()
            node.start()
        for node in self.nodes:
            node.wait()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
            node.ctl("await_startup", timeout=NODE_START_TIMEOUT)
        return self

    def node_named(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.node == name)

    def leader(self, queue: str, vhost: str = "/") -> ClusterNode:
        """The node leading quorum queue ``queue``, asked of any node that answers."""
        for node in self.nodes:
            try:
                listing = node.ctl("list_queues", "-p", vhost, "name", "leader", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            for line in listing.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.node_named(parts[1])
        raise RuntimeError(f"no node names a leader of {queue}")

    def messages(self, vhost: str = "/") -> dict[str, int]:
        """Messages (ready and unacknowledged) per queue, asked of any node that answers."""
        for node in self.nodes:
            try:
                listing = node.ctl("list_queues", "-p", vhost, "name", "messages", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            counts = {}
            for line in listing.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    counts[parts[0]] = int(parts[1])
            return counts
        raise RuntimeError("no node of the cluster answers")

    def stop_servers(self) -> None:
        for node in self.nodes:
            node.kill()
