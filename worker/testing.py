"""Child processes with their output collected, a real ``ccsync worker`` among them: for the
demo, the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

from worker.runtime.app import READY_MESSAGE

#: Seconds a process may take to go once SIGKILLed.
KILL_WAIT_SECONDS = 30.0


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL if it overstays ``timeout``; returns its exit status. A process
    already gone is left as it is."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=KILL_WAIT_SECONDS)
    return process.returncode


class ChildProcess:
    """A subprocess whose output (stdout and stderr, as text) is collected line by line, ready
    once a line holding ``ready_marker`` appears after it starts; it can be killed and started
    again. ``keep_lines`` bounds what is kept, so a chatty child cannot fill our memory."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        ready_marker: str,
        name: str,
        cwd: str | os.PathLike[str] | None = None,
        keep_lines: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.ready_marker = ready_marker
        self.name = name
        self._cwd = cwd
        self._keep_lines = keep_lines
        self._process: subprocess.Popen[str] | None = None
        self._collector: threading.Thread | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def start(self, timeout: float = 60.0) -> Self:
        """Start, and wait until the ready line appears; stop it and raise if it does not."""
        mark = len(self._lines)
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self._cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        self._collector = threading.Thread(target=self._collect, args=(self._process,), daemon=True)
        self._collector.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.find(self.ready_marker, since=mark) is not None:
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready; its output:\n{self.log[-4000:]}")

    def find(self, marker: str, *, since: int = 0) -> str | None:
        """The first line from line ``since`` on that holds ``marker``."""
        with self._lock:
            for line in self._lines[since:]:
                if marker in line:
                    return line
        return None

    def _collect(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                if self._keep_lines is None or len(self._lines) < self._keep_lines:
                    self._lines.append(line)

    def kill(self) -> None:
        """SIGKILL: the harshest crash, nothing acknowledged, nothing cleaned up."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=KILL_WAIT_SECONDS)
        self._release_pipe()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a warm shutdown), then SIGKILL if it overstays ``timeout``."""
        if self._process is None:
            return None
        returncode = stop_process(self._process, timeout)
        self._release_pipe()
        return returncode

    def _release_pipe(self) -> None:
        # The collector reads to end of file, which comes once the process is gone.
        if self._collector is not None:
            self._collector.join(timeout=10)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalWorker(ChildProcess):
    """A ``ccsync worker`` subprocess, ready once Celery says it consumes (with ``processes``
    above 1: once every process does). One process unless asked, whatever the machine's cores,
    so that a test means the same everywhere."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        concurrency: int = 16,
        loglevel: str = "INFO",
        processes: int = 1,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "worker",
            "worker",
            f"--processes={processes}",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
        ]
        super().__init__(argv, env=env, ready_marker=READY_MESSAGE, name="ccsync worker")
