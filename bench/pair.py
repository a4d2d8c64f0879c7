"""Two ``ccsync worker`` processes on one machine, as one system for the benchmark (scale-out).

Run as ``python -m bench.pair --concurrency 32``: starts both (the environment as given), prints
``READY`` once both consume, and stops both on SIGTERM. The benchmark samples this process's
tree, so both workers' memory and CPU count; this launcher imports nothing of ccsync, so that
its own memory stays small beside theirs.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from bench.children import stop_on_signals

READY = "ccsync pair ready"
#: Worker processes started.
WORKERS = 2
#: The start of the line a worker prints once it consumes (``worker.runtime.app.READY_MESSAGE``).
WORKER_READY = "ccsync worker ready"
#: Seconds a worker may take to become ready, then to stop after SIGTERM.
START_SECONDS = 120.0
STOP_SECONDS = 60.0


def _start(concurrency: int) -> tuple[subprocess.Popen[str], threading.Event]:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", f"--concurrency={concurrency}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:  # read to the end, so the worker never blocks on its pipe
            if WORKER_READY in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return process, ready


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pair")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    stop = stop_on_signals()
    workers = [_start(args.concurrency) for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + START_SECONDS
        for process, ready in workers:
            if not ready.wait(max(0.0, deadline - time.monotonic())) or process.poll() is not None:
                print("a worker did not become ready", file=sys.stderr, flush=True)
                return 1
        print(READY, flush=True)
        stop.wait()
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in workers:
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
