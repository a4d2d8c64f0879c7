"""The scale-out run of issue 18: a three-node RabbitMQ cluster, Redis with Sentinel, three
workers, nodes killed.

``python -m tests.cluster --events 5000`` starts three RabbitMQ nodes clustered with
``rabbitmqctl join_cluster``, a Redis primary with a replica and three Sentinels, the sandbox and
three ``ccsync worker`` processes (``CCSYNC_BROKER_URL`` listing the three nodes,
``CCSYNC_REDIS_URL`` naming the Sentinels, ``CCSYNC_REDIS_WAIT_REPLICAS=1``). It first makes one
dead letter (the API rejects one event), then publishes the events while it runs: five versions
per customer, shuffled, each published twice. Mid-run it SIGKILLs the node leading
``ccsync.events`` (and restarts it later), SIGKILLs the Redis primary (Sentinel promotes the
replica; the old primary comes back as a replica) and SIGKILLs one worker (a new one takes its
place). At the end it checks that the dead letter made before the leader was killed is still
listed and is replayed, then accounts for every event.

Printed: published, applied, skipped, dead-lettered, lost, customers holding their newest value,
and double PATCHes (events CloudCockpit accepted twice), each explained or not: a second PATCH is
explained when the first was answered within ``WINDOW_SECONDS`` before a disruption ended (the
event was applied, but its outcome did not reach the ledger or the broker before the crash).
Only this machine's extra nodes and ports are used; the main RabbitMQ and Redis are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Exchange, Producer

from tests.integration.conftest import worker_env
from tests.integration.events import native
from tests.integration.rabbitmq_cluster import ClusterNode, RabbitCluster
from tests.integration.redis_sentinel import SentinelRedis
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from tests.run_accounting import RunCounts, history, holds_newest, skipped_events
from worker.constants import EVENT_ROUTING_KEY, EVENTS_EXCHANGE, EVENTS_QUEUE
from worker.events import correlation_id
from worker.sandbox import FaultStep, SandboxControl, SandboxOptions, SandboxServer
from worker.testing import LocalWorker

TENANT = "cluster.cloudcockpit.local"
WORKERS = 3
#: Seconds before the end of a disruption within which a first PATCH may be repeated.
WINDOW_SECONDS = 20.0
#: Calls in flight per worker.
CONCURRENCY = 8
#: Lines of each worker's output a failed run shows.
DIAGNOSIS_LINES = 40
#: A page of ``dlq list`` larger than any run's dead letters: the accounting reads them all.
LIST_EVERY = 1_000_000


@dataclass
class ClusterReport(RunCounts):
    messages: int = 0
    newest: int = 0
    customers: int = 0
    double_patches: int = 0
    unexplained_doubles: list[str] = field(default_factory=list)
    early_dead_letter_listed: bool = False
    early_dead_letter_replayed: bool = False

    def lines(self) -> list[str]:
        return [
            f"disruptions: {', '.join(self.disruptions)}",
            f"published {self.published} events ({self.messages} messages, each twice) = "
            f"{self.balance()}",
            f"newest value held by {self.newest} of {self.customers} customers",
            f"double PATCHes {self.double_patches}, unexplained "
            f"{len(self.unexplained_doubles)} (window {WINDOW_SECONDS:g} s before a "
            "disruption ended)",
            f"dead letter made before the leader was killed: listed after "
            f"{self.early_dead_letter_listed}, replayed {self.early_dead_letter_replayed}",
            f"took {self.seconds:.0f}s",
        ]


class _NamedWorker(LocalWorker):
    """A worker seeing a host name of its own (a UTS namespace): Celery names a worker's
    remote-control queue after its host, and three workers share this machine."""

    def __init__(self, env: dict[str, str], *, host: str) -> None:
        super().__init__(env, concurrency=CONCURRENCY)
        self.argv = [
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {host} && exec "$0" "$@"',
            *self.argv,
        ]


class _Publisher(threading.Thread):
    """Publishes the messages at ``rate`` a second through the cluster, confirmed, reconnecting
    to a surviving node (a message whose confirm was lost is published again)."""

    def __init__(self, urls: str, messages: list[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.urls, self.messages, self.rate = urls, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Connection(self.urls, transport_options={"confirm_publish": True}) as conn:
                producer = Producer(conn)
                exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
                started = time.monotonic()
                publish = conn.ensure(
                    producer, producer.publish, max_retries=None, interval_start=0.5
                )
                for body in self.messages:
                    publish(
                        body,
                        exchange=exchange,
                        routing_key=EVENT_ROUTING_KEY,
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=2,
                    )
                    self.sent += 1
                    pause = started + self.sent / self.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as exc:  # reported by the run
            self.error = exc


def _ccsync(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cluster(
    events: int, *, rate: float = 250.0, seed: int = 1, log: Callable[[str], None] = print
) -> ClusterReport:
    rng = random.Random(seed)
    report = ClusterReport()
    started = time.monotonic()
    workers: list[LocalWorker] = []
    ends: list[float] = []  # wall-clock ends of disruptions
    with (
        RabbitCluster() as cluster,
        SentinelRedis() as redis_group,
        SandboxServer(SandboxOptions()) as sandbox_server,
        sandbox_server.control() as sandbox,
    ):
        log(f"cluster and Sentinel up after {time.monotonic() - started:.0f}s")
        urls = cluster.urls()
        env = worker_env(
            urls,
            sandbox_server.url,
            redis_group.url,
            CLOUDCOCKPIT_TENANT=TENANT,
            CCSYNC_REDIS_WAIT_REPLICAS="1",
            CCSYNC_HTTP_TIMEOUT="5",
            CCSYNC_RETRY_DELAYS="0.5,1,2,4,8,16,30,60",
            CCSYNC_UNANSWERED_HOLD_SECONDS="10",
            # The dead-letter store of the operators' commands: a file of this run's own.
            CCSYNC_DLQ_STORE_URL=f"sqlite:///{tempfile.mkdtemp(prefix='ccsync-cluster-')}/dlq.db",
        )

        def start_worker() -> LocalWorker:
            worker = _NamedWorker(env, host=f"ccsync-w{len(workers)}").start(timeout=180)
            workers.append(worker)
            return worker

        try:
            alive = [start_worker() for _ in range(WORKERS)]
            # A dead letter made before any node is killed: the API rejects this event once.
            early_customer = str(uuid.uuid4())
            early = native(early_customer, "EARLY", occurred_at=datetime(2026, 5, 1, tzinfo=UTC))
            sandbox.add_faults(early_customer, FaultStep(status=404))
            published_at = time.monotonic()
            _publish_now(urls, json.dumps(early).encode())
            _wait(lambda: _listed(env, early["eventId"]), timeout=120, what="the early dead letter")
            log(f"early dead letter made after {time.monotonic() - published_at:.0f}s")

            customers = history(events, "C")
            bodies = [json.dumps(e).encode() for v in customers.values() for e in v] * 2
            rng.shuffle(bodies)
            report.published, report.messages = len(bodies) // 2, len(bodies)
            publisher = _Publisher(urls, bodies, rate)
            publisher.start()

            def progress() -> float:
                return len(final_outcomes(*workers)) / len(bodies)

            leader = cluster.leader(EVENTS_QUEUE)
            steps = [(0.15, "rabbitmq"), (0.35, "redis"), (0.55, "worker"), (0.7, "restart")]
            for threshold, disruption in steps:
                _wait(lambda t=threshold: progress() >= t, timeout=900, what=f"{threshold:.0%}")
                log(f"{progress():.0%} done: {disruption}")
                if disruption == "rabbitmq":
                    report.disruptions.append(f"kill -9 RabbitMQ node {leader.node} (leader)")
                    leader.kill()
                    _wait(lambda: _led_elsewhere(cluster, leader), 120, "a new leader")
                elif disruption == "redis":
                    old = redis_group.kill_primary()
                    report.disruptions.append(f"kill -9 Redis primary :{old}")
                    redis_group.await_failover(old)
                    redis_group.restart(old)
                elif disruption == "worker":
                    report.disruptions.append("kill -9 one worker")
                    alive[0].kill()
                    alive[0] = start_worker()
                else:
                    report.disruptions.append(f"restart {leader.node}")
                    leader.start()
                    leader.wait()
                ends.append(time.time())
            publisher.join(timeout=1800)
            if publisher.error is not None:
                raise RuntimeError(f"the publisher failed: {publisher.error!r}")
            _wait(lambda: _drained(cluster), timeout=1800, what="the queues to drain")
            time.sleep(3)
            _wait(lambda: _drained(cluster), timeout=600, what="the queues to drain")

            # The early dead letter survived its leader's death: listed, then replayed.
            report.early_dead_letter_listed = _listed(env, early["eventId"])
            sandbox.clear_faults()
            replay = _ccsync(env, "dlq", "replay", "--event-id", early["eventId"], "--yes")
            if replay.returncode == 0:
                _wait(lambda: _holds(sandbox, early_customer, "EARLY"), 60, "the replay")
                report.early_dead_letter_replayed = True
            _account(report, customers, sandbox, env, workers, ends)
        except (AssertionError, subprocess.TimeoutExpired) as exc:  # say what the workers saw
            raise AssertionError(f"{exc}\n{_diagnosis(env, workers)}") from None
        finally:
            for worker in workers:
                worker.kill()
    report.seconds = time.monotonic() - started
    return report


def _led_elsewhere(cluster: RabbitCluster, old: ClusterNode) -> bool:
    try:
        return cluster.leader(EVENTS_QUEUE) is not old
    except RuntimeError:
        return False


def _publish_now(urls: str, body: bytes) -> None:
    with Connection(urls, transport_options={"confirm_publish": True}) as connection:
        Producer(connection).publish(
            body,
            exchange=Exchange(EVENTS_EXCHANGE, type="topic", durable=True),
            routing_key=EVENT_ROUTING_KEY,
            content_type="application/json",
            delivery_mode=2,
        )


def _dead_letters(env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``dlq list --json`` of every dead letter, once the keeper took in what the queue holds."""
    _ccsync(env, "dlq", "keep", "--once", timeout=timeout)
    return _ccsync(env, "dlq", "list", "--json", "--limit", str(LIST_EVERY), timeout=timeout)


def _listed(env: dict[str, str], event_id: str) -> bool:
    listing = _dead_letters(env)
    return listing.returncode == 0 and any(
        json.loads(line).get("eventId") == event_id for line in listing.stdout.splitlines()
    )


def _diagnosis(env: dict[str, str], workers: list[LocalWorker]) -> str:
    try:
        listing = _dead_letters(env, timeout=60)
        parts = [f"ccsync dlq list: exit {listing.returncode}\n{listing.stderr[-2000:]}"]
    except subprocess.TimeoutExpired:
        parts = ["ccsync dlq list: no answer within 60 s"]
    for number, worker in enumerate(workers):
        tail = "".join(worker.log.splitlines(keepends=True)[-DIAGNOSIS_LINES:])
        parts.append(f"worker {number} (alive {worker.alive}), its last lines:\n{tail}")
    return "\n".join(parts)


def _holds(sandbox: SandboxControl, customer: str, value: str) -> bool:
    return any(
        c["id"] == customer and c["relationships"].get("self") == value for c in sandbox.state()
    )


def _drained(cluster: RabbitCluster) -> bool:
    counts = cluster.messages()
    return all(n == 0 for name, n in counts.items() if name != "ccsync.dead-letter")


def _account(
    report: ClusterReport,
    history: dict[str, list[dict[str, Any]]],
    sandbox: SandboxControl,
    env: dict[str, str],
    workers: list[LocalWorker],
    ends: list[float],
) -> None:
    first_success: dict[str, float] = {}
    successes: dict[str, int] = defaultdict(int)
    for entry in sandbox.journal():
        if entry["method"] == "PATCH" and entry["status"] == 204:
            key = entry["headers"].get("x-correlation-id", "")
            successes[key] += 1
            first_success.setdefault(key, entry["respondedAt"])
    skipped = skipped_events(workers)
    listing = _dead_letters(env)
    dead = {}
    for line in listing.stdout.splitlines():
        record = json.loads(line)
        dead[str(record.get("eventId"))] = str(record.get("reason"))
    final = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    for customer, versions in history.items():
        report.customers += 1
        for event in versions:
            event_id = event["eventId"]
            key = str(correlation_id(TENANT, event_id))
            applied = bool(successes.get(key))
            report.count(event_id, applied=applied, dead=dead, skipped=skipped)
            if applied and successes[key] > 1:
                report.double_patches += successes[key] - 1
                at = first_success[key]
                if not any(end - WINDOW_SECONDS <= at <= end for end in ends):
                    report.unexplained_doubles.append(event_id)
        if holds_newest(versions, dead, final.get(customer)) is not False:
            report.newest += 1


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(check, timeout, what, interval=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=250.0, help="messages published a second")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    report = run_cluster(arguments.events, rate=arguments.rate, seed=arguments.seed)
    for line in report.lines():
        print(line)
    ok = not report.lost and report.newest == report.customers and not report.unexplained_doubles
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
