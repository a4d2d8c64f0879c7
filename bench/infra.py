"""The machinery around a benchmark run: throwaway vhosts, child processes, memory and CPU.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Self
from urllib.parse import quote

from worker.testing import ChildProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
VHOST_PREFIX = "ccsync-bench-"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


# --- RabbitMQ ---------------------------------------------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 120.0) -> str:
    command = [shutil.which("rabbitmqctl") or "rabbitmqctl", "-q", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def rabbitmq_version() -> str:
    try:
        return rabbitmqctl("version", timeout=60).strip() or "unknown"
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return "unknown"


class Vhost:
    """A vhost made for one run (guest may do anything in it) and deleted afterwards."""

    def __init__(self, label: str) -> None:
        self.name = f"{VHOST_PREFIX}{os.getpid()}-{label}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{quote(self.name, safe='')}"

    def __enter__(self) -> Self:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            rabbitmqctl("delete_vhost", self.name)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            print(f"warning: could not delete vhost {self.name}: {error}", file=sys.stderr)


def delete_stale_vhosts() -> None:
    """Vhosts left by a benchmark that was killed: their owner process is gone."""
    for line in rabbitmqctl("list_vhosts", "name").splitlines():
        name = line.strip()
        if not name.startswith(VHOST_PREFIX):
            continue
        owner = name.removeprefix(VHOST_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                rabbitmqctl("delete_vhost", name)


# --- Redis ------------------------------------------------------------------------------------


def flush_redis_db(db: int, port: int = 6379) -> bool:
    """FLUSHDB on one database of the local Redis (spoken in RESP: no client needed)."""
    db_text = str(db)
    command = (
        f"*2\r\n$6\r\nSELECT\r\n${len(db_text)}\r\n{db_text}\r\n*1\r\n$7\r\nFLUSHDB\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(command)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+OK\r\n+OK")


# --- child processes --------------------------------------------------------------------------


#: Lines of a child's output kept: a chatty child cannot fill the benchmark's memory.
KEEP_LINES = 20_000


def child_process(
    argv: Sequence[str], *, env: Mapping[str, str], ready_marker: str, name: str
) -> ChildProcess:
    """A process of the benchmark, run from the repository's root."""
    return ChildProcess(
        argv, env=env, ready_marker=ready_marker, name=name, cwd=REPO_ROOT, keep_lines=KEEP_LINES
    )


class SandboxProcess(ChildProcess):
    """``python -m worker sandbox`` in its own process, so its CPU is not the worker's."""

    def __init__(self) -> None:
        # A port free now (the CLI takes no port 0): the benchmark runs alone on this host.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        argv = [sys.executable, "-m", "worker", "sandbox", "--host", "127.0.0.1", "--port", port]
        super().__init__(
            argv,
            env={},
            ready_marker="listening on http://",
            name="the sandbox",
            cwd=REPO_ROOT,
            keep_lines=KEEP_LINES,
        )

    @property
    def url(self) -> str:
        line = self.find(self.ready_marker)
        assert line is not None
        return line.rsplit(" ", 1)[-1].strip()


# --- process trees: memory and CPU ------------------------------------------------------------


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rfind(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree: list[int] = []
    stack = [root]
    while stack and len(tree) < 10_000:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


def pids_named(command: str) -> list[int]:
    """Processes whose /proc/PID/comm is ``command`` (beam.smp, redis-server)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() == command:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time of the processes, and of their children already reaped."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rfind(b")") + 2 :].split()
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / _TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class TreeSampler:
    """RSS of a process and all its descendants every ``interval`` seconds, in a thread."""

    root: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pids: list[int] = field(default_factory=list)

    def start(self) -> Self:
        self._pids = process_tree(self.root)
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = rss_bytes(self._pids)
        if rss:
            self.samples.append((time.time(), rss))

    def _run(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed >= 1.0:  # the tree changes rarely; /proc scans cost
                self._pids = process_tree(self.root)
                refreshed = time.monotonic()
            self._sample()

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    @property
    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0


# --- the machine ------------------------------------------------------------------------------


def ccsync_revision() -> str:
    """The commit measured, and whether worker/ had uncommitted changes then."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "worker")
    return f"{commit} with uncommitted changes in worker/" if dirty else commit


def machine_info() -> dict[str, str]:
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "ccsync": ccsync_revision(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "httpx": version("httpx"),
    }
