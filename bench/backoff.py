"""``python -m bench backoff``: what 10,000 events waiting in backoff cost the worker's memory.

Every call is answered 429 with ``Retry-After: 3600``, so each event goes into the broker's delay
ladder for an hour. The worker's RSS (all its processes) is read when idle after a warm-up and
again once every event waits in the ladder; the difference is what backoff costs the worker.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from bench.harness import Ccsync, make_events, publish_plain
from bench.infra import SandboxProcess, TreeSampler, Vhost, delete_stale_vhosts, rabbitmqctl
from worker.constants import DELAY_QUEUE_PREFIX, EVENTS_QUEUE, TASKS_QUEUE
from worker.sandbox import SandboxControl

MB = 2**20


def _queue_depths(vhost: str) -> dict[str, int]:
    listing = rabbitmqctl("list_queues", "-p", vhost, "name", "messages")
    depths = {}
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if count.strip().isdigit():
            depths[name] = int(count)
    return depths


def _waiting(depths: dict[str, int]) -> int:
    return sum(count for name, count in depths.items() if name.startswith(DELAY_QUEUE_PREFIX))


def run_backoff(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench backoff", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    args = parser.parse_args(argv)
    delete_stale_vhosts()
    system = Ccsync(concurrency=32)
    sandbox = SandboxProcess()
    try:
        sandbox.start()
        with SandboxControl(sandbox.url, timeout=60) as control, Vhost("backoff") as vhost:
            sampler = TreeSampler(system.start(vhost.url, sandbox.url)).start()
            try:
                publish_plain(vhost.url, make_events(args.warmup, "warmup"), tag="warmup")
                _wait(lambda: _applied(control) >= args.warmup, timeout=300)
                time.sleep(3)
                idle = sampler.last
                control.add_faults("*", {"status": 429, "retryAfter": 3600, "times": args.events})
                publish_plain(vhost.url, make_events(args.events, "backoff"), tag="backoff")
                _wait(
                    lambda: _waiting(_queue_depths(vhost.name)) >= args.events,
                    timeout=900,
                    interval=2.0,
                )
                time.sleep(3)
                waiting = sampler.last
                depths = _queue_depths(vhost.name)
            finally:
                system.stop()
                sampler.stop()
    finally:
        sandbox.stop()
    print(
        f"backoff: {_waiting(depths)} events waiting in the delay ladder "
        f"({depths.get(EVENTS_QUEUE, 0)} in {EVENTS_QUEUE}, {depths.get(TASKS_QUEUE, 0)} in "
        f"{TASKS_QUEUE})"
    )
    print(f"backoff: worker RSS idle {idle / MB:.1f} MB, with them waiting {waiting / MB:.1f} MB")
    print(f"backoff: {(waiting - idle) / MB:+.1f} MB for {args.events} events in backoff")
    return 0


def _applied(control: SandboxControl) -> int:
    return sum(1 for e in control.journal() if e["method"] == "PATCH" and e["status"] == 204)


def _wait(check: Callable[[], bool], *, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress for {timeout:.0f}s")
        time.sleep(interval)
