"""``ccsync worker --processes N``: one parent and N full workers, each a process of its own.

Each child is ``python -m worker worker --processes 1`` (``run_worker``), started with fork and
exec by ``subprocess``: the parent never forks a copy of itself, so no Celery, kombu or thread
state is ever inherited. Each child is a Celery node of its own (``ccsync.<pid>@<host>``), which
``celery inspect`` and Flower see like any worker. The children run in a process group of their
own: a terminal's Ctrl-C reaches the parent only, which decides what the children get. A child
whose parent ended, even SIGKILLed, gets SIGTERM (``stop_with_parent``): no orphan consumes on.

The parent:

- forwards the first SIGTERM or SIGINT to every child as SIGTERM (a warm shutdown: calls in flight
  finish and are acknowledged); a second one SIGKILLs them (whatever was unacknowledged is
  delivered again). It exits 0 once every child ended with 0.
- starts a child that ended without being asked (a crash, a SIGKILL, status 70: a stage died)
  again after a backoff, logging why; more than ``RestartPolicy.max_restarts`` restarts within
  ``RestartPolicy.window_seconds`` stop every child and exit ``EXIT_TOO_MANY_RESTARTS``.
- prints ``READY_MESSAGE`` once, when every child printed it (it relays the rest of their
  standard error as it comes).

With ``CCSYNC_METRICS_PORT``, the parent serves /metrics, /livez and /readyz there: /metrics sums
the children (prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR`` in a directory
of the parent's own); /livez and /readyz ask each child's own endpoints (on a loopback port the
parent gives it) and fail when any child's fails or a child does not answer.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import IO, Final

import httpx
from prometheus_client import CollectorRegistry, multiprocess

from worker.observability.endpoints import ProbeAnswer, serve_endpoints
from worker.observability.logs import configure_logging
from worker.runtime.app import READY_MESSAGE, check_api_settings, declare_topology_within
from worker.runtime.pipeline import EXIT_STAGE_DIED
from worker.runtime.probes import READINESS_API_TIMEOUT
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Exit status of a parent whose children kept dying (restarts past the policy's limit).
EXIT_TOO_MANY_RESTARTS: Final = 1
#: Seconds before the first restart of a child; each restart within the window doubles it.
RESTART_FIRST_DELAY_SECONDS: Final = 1.0
#: Seconds a restart waits at most.
RESTART_MAX_DELAY_SECONDS: Final = 30.0
#: Restarts (of any child) the parent makes within ``RESTART_WINDOW_SECONDS`` before it gives up.
MAX_RESTARTS: Final = 5
#: Seconds over which restarts are counted.
RESTART_WINDOW_SECONDS: Final = 120.0
#: Seconds between two looks of the parent at its children and at the signals it got.
WATCH_SECONDS: Final = 0.1
#: Seconds the children get to end after the parent forwarded SIGTERM, before they are killed
#: (longer than the longest call and acknowledgement of a warm shutdown).
STOP_SECONDS: Final = 120.0
#: Seconds the parent's /livez waits for each child's answer (a child's /livez reads clocks only).
CHILD_LIVENESS_TIMEOUT_SECONDS: Final = 2.0
#: Seconds the parent's /readyz waits for each child's answer: the child's own bound on asking
#: CloudCockpit, and some.
CHILD_READINESS_TIMEOUT_SECONDS: Final = READINESS_API_TIMEOUT + 2.0
#: Seconds the relay of a child's standard error may take to drain once the child is gone.
RELAY_DRAIN_SECONDS: Final = 5.0
#: The variable by which the parent gives each child its pid (``stop_with_parent``).
PARENT_PID_VARIABLE: Final = "CCSYNC_PARENT_PID"
#: Linux's ``prctl`` option: the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again, and when the parent gives up instead."""

    first_delay_seconds: float = RESTART_FIRST_DELAY_SECONDS
    max_delay_seconds: float = RESTART_MAX_DELAY_SECONDS
    max_restarts: int = MAX_RESTARTS
    window_seconds: float = RESTART_WINDOW_SECONDS

    def delay(self, recent_restarts: int) -> float:
        """Seconds before the next restart, after ``recent_restarts`` within the window."""
        return float(min(self.first_delay_seconds * 2**recent_restarts, self.max_delay_seconds))


def why_it_ended(status: int) -> str:
    """A child's exit status, told for the log."""
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    if status == EXIT_STAGE_DIED:
        return f"exit status {status}: a stage of its pipeline died"
    return f"exit status {status}"


class Child:
    """One slot of the parent: the process running in it now, if any, and its loopback port."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.ready = threading.Event()
        self.restart_at: float | None = None
        self._relay: threading.Thread | None = None

    def start(self, argv: Sequence[str], env: Mapping[str, str], *, ready_line: bytes) -> None:
        self.ready.clear()
        self.restart_at = None
        self.process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0,
        )
        assert self.process.stderr is not None
        self._relay = threading.Thread(
            target=self._relay_stderr,
            args=(self.process.stderr, ready_line),
            name=f"ccsync-relay-{self.index}",
            daemon=True,
        )
        self._relay.start()

    def _relay_stderr(self, stream: IO[bytes], ready_line: bytes) -> None:
        # Read to the end, so that the child never blocks on a full pipe.
        for line in stream:
            if line.rstrip(b"\r\n") == ready_line:
                self.ready.set()
                continue
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def reap(self) -> tuple[int, int] | None:
        """The pid and exit status of a process that ended (and the slot emptied), or None."""
        if self.process is None or (status := self.process.poll()) is None:
            return None
        pid = self.process.pid
        if self._relay is not None:
            self._relay.join(timeout=RELAY_DRAIN_SECONDS)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        return pid, status


#: The command line and environment of a child about to start (in the slot given).
Launch = Callable[[Child], tuple[Sequence[str], Mapping[str, str]]]


class Supervisor:
    """Runs ``count`` children, each as ``launch`` says, until told to stop (see the module's
    docstring). ``on_exit(pid)`` is told of every child that ended.
    """

    def __init__(
        self,
        launch: Launch,
        *,
        count: int,
        policy: RestartPolicy | None = None,
        on_exit: Callable[[int], None] = lambda pid: None,
        ready_message: str = READY_MESSAGE,
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        self.children = [Child(index) for index in range(count)]
        self._launch = launch
        self._policy = policy or RestartPolicy()
        self._on_exit = on_exit
        self._ready_message = ready_message
        self._stop_seconds = stop_seconds
        self._restarts: deque[float] = deque()
        self._signals = 0

    def run(self) -> int:
        """Blocks until every child ended; returns the parent's exit status."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            return self._watch()
        finally:
            for child in self.children:
                child.signal(signal.SIGKILL)  # only if the parent itself failed: none is left
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _start(self, child: Child) -> None:
        argv, env = self._launch(child)
        child.start(argv, env, ready_line=self._ready_message.encode())
        assert child.process is not None
        log.info("worker process %d started (pid %d)", child.index, child.process.pid)

    def _watch(self) -> int:
        for child in self.children:
            self._start(child)
        announced = False
        stop_deadline: float | None = None
        killed = False
        exit_status = 0
        while True:
            now = time.monotonic()
            if self._signals and stop_deadline is None:
                log.warning("stopping the %d worker processes (warm shutdown)", len(self.children))
                stop_deadline = self._stop_all(now)
            if not killed and (
                self._signals > 1 or (stop_deadline is not None and now > stop_deadline)
            ):
                log.warning("killing the worker processes")
                killed = True
                for child in self.children:
                    child.signal(signal.SIGKILL)
            for child in self.children:
                ended = child.reap()
                if ended is not None:
                    pid, status = ended
                    self._on_exit(pid)
                    if stop_deadline is not None:
                        # SIGTERM itself ends a child that had not set up its handler yet.
                        clean = status in (0, -signal.SIGTERM)
                        exit_status = exit_status or (0 if clean else 1)
                    elif not self._schedule_restart(child, pid, status, now):
                        exit_status = EXIT_TOO_MANY_RESTARTS
                        stop_deadline = self._stop_all(now)
                elif child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            if not announced and all(child.ready.is_set() for child in self.children):
                announced = True
                # Printed whatever the log level: supervisors and tests wait for this line.
                print(self._ready_message, file=sys.stderr, flush=True)
            if stop_deadline is not None and all(c.process is None for c in self.children):
                return exit_status
            time.sleep(WATCH_SECONDS)

    def _stop_all(self, now: float) -> float:
        for child in self.children:
            child.restart_at = None
            child.signal(signal.SIGTERM)
        return now + self._stop_seconds

    def _schedule_restart(self, child: Child, pid: int, status: int, now: float) -> bool:
        """Schedules the restart of ``child``; False when restarts are past the policy's limit."""
        while self._restarts and now - self._restarts[0] > self._policy.window_seconds:
            self._restarts.popleft()
        if len(self._restarts) >= self._policy.max_restarts:
            log.critical(
                "worker process %d (pid %d) ended (%s): %d restarts within %gs already, stopping "
                "every worker process",
                child.index,
                pid,
                why_it_ended(status),
                len(self._restarts),
                self._policy.window_seconds,
            )
            return False
        delay = self._policy.delay(len(self._restarts))
        self._restarts.append(now)
        child.restart_at = now + delay
        log.error(
            "worker process %d (pid %d) ended (%s): starting it again in %gs; its unacknowledged "
            "messages are delivered again",
            child.index,
            pid,
            why_it_ended(status),
            delay,
        )
        return True


class ChildProbes:
    """The parent's /livez and /readyz: every child's own answer, failed when any child fails."""

    def __init__(self, children: Sequence[Child]) -> None:
        self._children = list(children)
        self._http = httpx.Client(trust_env=False)  # loopback: never through a proxy

    def live(self) -> ProbeAnswer:
        return self._ask("/livez", CHILD_LIVENESS_TIMEOUT_SECONDS)

    def ready(self) -> ProbeAnswer:
        return self._ask("/readyz", CHILD_READINESS_TIMEOUT_SECONDS)

    def _ask(self, path: str, timeout: float) -> ProbeAnswer:
        with ThreadPoolExecutor(
            max_workers=len(self._children), thread_name_prefix="ccsync-child-probe"
        ) as pool:
            answers = list(
                pool.map(lambda child: self._ask_child(child, path, timeout), self._children)
            )
        text = "\n".join(
            f"process {child.index}: {a.text}"
            for child, a in zip(self._children, answers, strict=True)
        )
        return ProbeAnswer(all(answer.ok for answer in answers), text)

    def _ask_child(self, child: Child, path: str, timeout: float) -> ProbeAnswer:
        port, process = child.port, child.process
        if process is None or port is None:
            return ProbeAnswer(False, "not running (being started again)")
        try:
            answer = self._http.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
        except httpx.HTTPError as exc:
            return ProbeAnswer(False, f"pid {process.pid} does not answer: {type(exc).__name__}")
        lines = answer.text.strip().splitlines()[1:]  # after its own "ok" or "FAILED"
        return ProbeAnswer(answer.status_code == 200, f"pid {process.pid}; " + "; ".join(lines))


def stop_with_parent() -> None:
    """In a child of the parent: a SIGTERM (warm shutdown) as soon as the parent ends, even
    SIGKILLed, so that no worker consumes on, orphaned, after it. Elsewhere, nothing (Linux only:
    ``prctl(PR_SET_PDEATHSIG)``)."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent ended before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def free_loopback_port() -> int:
    """A port nobody listens on now, for a child's endpoints. Another process could take it
    before the child does: the child then fails to start and is started again, on another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def child_node_name(node_name: str | None, index: int) -> list[str]:
    """The ``--hostname`` argument of child ``index`` when the parent was given ``NAME@HOST``:
    ``NAME.<index>@HOST``, one node name per child (None: each child's default, with its pid)."""
    if node_name is None:
        return []
    name, at, host = node_name.partition("@")
    return [f"--hostname={name}.{index}{at}{host}"]


def run_processes(
    settings: Settings,
    count: int,
    worker_arguments: Sequence[str],
    loglevel: str,
    *,
    node_name: str | None = None,
) -> int:
    """Runs ``count`` workers (``ccsync worker --processes 1`` and ``worker_arguments``) under
    this process until SIGTERM or SIGINT; returns the exit status (0 after a clean shutdown).

    Fails as one worker would, in the parent, before any child starts: ``ConfigurationError``
    without API credentials (or with a CA or proxy the lanes cannot use), ``BrokerUnreachable``
    when the broker does not answer within ``settings.broker_connect_timeout`` seconds. A child
    failing later is started again (``Supervisor``).
    """
    check_api_settings(settings)
    declare_topology_within(settings)
    configure_logging(loglevel, settings)
    argv = [sys.executable, "-m", "worker", "worker", "--processes=1", *worker_arguments]
    base_env = {**os.environ, "CCSYNC_PROCESSES": "1", PARENT_PID_VARIABLE: str(os.getpid())}
    if settings.metrics_port is None:
        supervisor = Supervisor(
            lambda child: ([*argv, *child_node_name(node_name, child.index)], base_env),
            count=count,
        )
        return supervisor.run()

    metrics_dir = tempfile.mkdtemp(prefix="ccsync-metrics-")

    def launch(child: Child) -> tuple[Sequence[str], Mapping[str, str]]:
        child.port = free_loopback_port()
        env = {
            **base_env,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "CCSYNC_METRICS_PORT": str(child.port),
            "CCSYNC_METRICS_HOST": "127.0.0.1",
        }
        return [*argv, *child_node_name(node_name, child.index)], env

    supervisor = Supervisor(
        launch,
        count=count,
        on_exit=lambda pid: multiprocess.mark_process_dead(pid, metrics_dir),  # type: ignore[no-untyped-call]
    )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    probes = ChildProbes(supervisor.children)
    server = serve_endpoints(
        settings.metrics_port,
        host=settings.metrics_host,
        live=probes.live,
        ready=probes.ready,
        registry=registry,
    )
    try:
        return supervisor.run()
    finally:
        server.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)
