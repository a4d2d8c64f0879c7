"""The chaos run of issue 7: events through a worker while everything around it breaks.

``python -m tests.chaos --events 5000`` publishes events (five versions per customer, shuffled),
lets the sandbox fail a fifth of the calls at random (500, 503, timeouts, dropped connections),
kills the worker with SIGKILL twice, restarts RabbitMQ once (``rabbitmqctl stop_app`` /
``start_app``) and the worker's Redis once, waits until nothing is left in any queue, then
accounts for every eventId: applied, skipped as stale or duplicate, or dead-lettered with a
reason. It prints the counts; ``lost`` must be 0 and every customer must hold its newest value
that was not dead-lettered.

It stops the whole local RabbitMQ node for a few seconds: run it when nothing else uses it.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import worker_env
from tests.integration.producer import Producer, read_dead_letters
from tests.integration.redis_process import RedisProcess
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from tests.run_accounting import RunCounts, history, holds_newest, skipped_events
from worker.events import correlation_id
from worker.sandbox import RandomFaults, SandboxControl, SandboxOptions, SandboxServer
from worker.testing import LocalWorker

TENANT = "chaos.cloudcockpit.local"


@dataclass
class ChaosReport(RunCounts):
    wrong_final: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"disruptions: {', '.join(self.disruptions)}",
            f"published {self.published} = {self.balance()}",
            f"customers not holding their newest value: {len(self.wrong_final)}",
            f"took {self.seconds:.0f}s",
        ]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=180)


def _messages_left(vhost: str) -> int:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    total = 0
    for line in listing.splitlines():
        parts = line.split()
        # Dead letters stay where they are; every other queue must drain.
        waiting = len(parts) == 2 and parts[0].startswith("ccsync.") and parts[1].isdigit()
        if waiting and parts[0] != "ccsync.dead-letter":
            total += int(parts[1])
    return total


def run_chaos(
    events: int, kills: int = 2, seed: int = 1, log: Callable[[str], None] = print
) -> ChaosReport:
    rng = random.Random(seed)
    report = ChaosReport()
    started = time.monotonic()
    vhost = f"ccsync-chaos-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    broker_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    workers: list[LocalWorker] = []
    try:
        with (
            tempfile.TemporaryDirectory() as directory,
            RedisProcess(Path(directory)) as redis,
            SandboxServer(SandboxOptions()) as sandbox_server,
            sandbox_server.control() as sandbox,
        ):
            sandbox.set_random_faults(
                RandomFaults(
                    rate=0.2, kinds=("500", "503", "timeout", "drop"), timeout_ms=3000, seed=seed
                )
            )
            env = worker_env(
                broker_url,
                sandbox_server.url,
                redis.url,
                CLOUDCOCKPIT_TENANT=TENANT,
                CCSYNC_HTTP_TIMEOUT="2",
                CCSYNC_RETRY_DELAYS="0.5,1,2,4,8,16,30",
            )

            def start_worker() -> LocalWorker:
                worker = LocalWorker(env, concurrency=16).start(timeout=120)
                workers.append(worker)
                return worker

            customers = history(events, "X")
            messages = [event for versions in customers.values() for event in versions]
            rng.shuffle(messages)
            report.published = len(messages)
            worker = start_worker()
            producer = Producer(broker_url)
            for event in messages:
                producer.publish(json.dumps(event).encode(), "application/json")
            producer.close()
            log(f"published {len(messages)} events")

            def progress() -> float:
                return len(final_outcomes(*workers)) / len(messages)

            steps: list[tuple[float, str]] = [
                (0.1 + 0.6 * i / max(kills, 1), "kill") for i in range(kills)
            ]
            steps += [(0.3, "rabbitmq"), (0.5, "redis")]
            for threshold, disruption in sorted(steps):
                wait_until(
                    functools.partial(_reached, progress, threshold), 900, f"{threshold:.0%}", 0.5
                )
                log(f"{progress():.0%} done: disrupting {disruption}")
                report.disruptions.append(disruption)
                if disruption == "kill":
                    worker.kill()
                    worker = start_worker()
                elif disruption == "rabbitmq":
                    _rabbitmqctl("stop_app")
                    time.sleep(3)
                    _rabbitmqctl("start_app")
                    _rabbitmqctl("await_startup")
                else:
                    redis.stop()
                    time.sleep(5)
                    redis.start()
            wait_until(lambda: _messages_left(vhost) == 0, 1800, "the queues to drain", 2.0)
            time.sleep(3)
            wait_until(lambda: _messages_left(vhost) == 0, 600, "the queues to drain", 2.0)
            worker.stop(timeout=30)
            _account(report, customers, sandbox, broker_url, workers)
    finally:
        for worker in workers:
            worker.kill()
        _rabbitmqctl("delete_vhost", vhost)
    report.seconds = time.monotonic() - started
    return report


def _account(
    report: ChaosReport,
    history: dict[str, list[dict[str, Any]]],
    sandbox: SandboxControl,
    broker_url: str,
    workers: list[LocalWorker],
) -> None:
    journal = sandbox.journal()
    succeeded = {
        entry["headers"].get("x-correlation-id")
        for entry in journal
        if entry["method"] == "PATCH" and entry["status"] == 204
    }
    skipped = skipped_events(workers)
    letters = read_dead_letters(broker_url, expected=10**9, timeout=3)
    dead = {
        str(letter.headers.get("x-ccsync-event-id")): str(letter.headers.get("x-ccsync-reason"))
        for letter in letters
    }
    final = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    for customer, versions in history.items():
        for event in versions:
            event_id = event["eventId"]
            applied = str(correlation_id(TENANT, event_id)) in succeeded
            report.count(event_id, applied=applied, dead=dead, skipped=skipped)
        if holds_newest(versions, dead, final.get(customer)) is False:
            report.wrong_final.append(customer)


def _reached(progress: Callable[[], float], threshold: float) -> bool:
    return progress() >= threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    report = run_chaos(arguments.events, arguments.kills, arguments.seed)
    for line in report.lines():
        print(line)
    raise SystemExit(0 if not report.lost and not report.wrong_final else 1)


if __name__ == "__main__":
    main()
