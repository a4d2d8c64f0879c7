"""One measured run: a fresh vhost, a worker, N events published, the sandbox journal read back.

Each event carries its publish time (ns since the epoch) inside ``internalIdentifier``, so the
sandbox journal, which records when each PATCH arrived, gives the publish-to-PATCH latency of every
event without any clock but the machine's own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Protocol

from kombu import Connection, Exchange

from bench import bare, fair_celery, naive_celery
from bench.infra import (
    TreeSampler,
    Vhost,
    child_process,
    cpu_seconds,
    flush_redis_db,
    machine_cpu,
    pids_named,
)
from worker.constants import EVENT_ROUTING_KEY, EVENT_TYPE, EVENTS_EXCHANGE
from worker.sandbox import SandboxControl
from worker.settings import DEFAULT_CONCURRENCY
from worker.testing import ChildProcess, LocalWorker

TENANT = "bench.example"
TOKEN = "sandbox-token"
REDIS_DB = 15
CONFIRM_WINDOW = 1000


# --- events -----------------------------------------------------------------------------------


def make_events(count: int, tag: str) -> list[dict[str, Any]]:
    """Native events (contract section 3), a new customer each so no two compete for order."""
    occurred_at = datetime.now(UTC).isoformat()
    return [
        {
            "eventId": f"{tag}-{index}",
            "eventType": EVENT_TYPE,
            "occurredAt": occurred_at,
            "customerId": str(uuid.uuid4()),
            "resellerId": None,
            "internalIdentifier": None,
            "source": "ccsync-bench",
        }
        for index in range(count)
    ]


def stamp(event: dict[str, Any], tag: str, index: int) -> dict[str, Any]:
    """The event with its publish time, taken now, in ``internalIdentifier``."""
    event["internalIdentifier"] = f"{tag}:{index}:{time.time_ns()}"
    return event


def parse_stamp(identifier: object, tag: str) -> tuple[int, float] | None:
    if not isinstance(identifier, str) or not identifier.startswith(f"{tag}:"):
        return None
    _, index, ns = identifier.split(":")
    return int(index), int(ns) / 1e9


# --- publishing -------------------------------------------------------------------------------


def publish_plain(broker_url: str, events: Sequence[dict[str, Any]], *, tag: str) -> None:
    """Persistent JSON messages to ``customer-events``, as a producer does, confirms batched.

    Publishes without waiting for each confirm, keeping at most ``CONFIRM_WINDOW`` unconfirmed,
    and returns once the broker confirmed every one.
    """
    pending: deque[int] = deque()
    nacked = 0

    def on_ack(tag_: int, multiple: bool) -> None:
        if multiple:
            while pending and pending[0] <= tag_:
                pending.popleft()
        elif pending and pending[0] == tag_:
            pending.popleft()
        elif tag_ in pending:
            pending.remove(tag_)

    def on_nack(tag_: int, multiple: bool) -> None:
        nonlocal nacked
        nacked += 1
        on_ack(tag_, multiple)

    with Connection(broker_url) as connection:
        channel = connection.channel()
        Exchange(EVENTS_EXCHANGE, type="topic", durable=True)(channel).declare()
        channel.confirm_select()
        channel.events["basic_ack"].add(on_ack)
        channel.events["basic_nack"].add(on_nack)
        amqp_connection = connection.connection

        def drain(limit: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while len(pending) > limit:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} publishes unconfirmed after {timeout}s")
                with contextlib.suppress(TimeoutError):
                    amqp_connection.drain_events(timeout=1.0)

        for index, event in enumerate(events):
            body = json.dumps(stamp(event, tag, index)).encode()
            message = channel.prepare_message(
                body, content_type="application/json", properties={"delivery_mode": 2}
            )
            channel.basic_publish(message, exchange=EVENTS_EXCHANGE, routing_key=EVENT_ROUTING_KEY)
            pending.append(index + 1)  # delivery tags count from 1 on a confirming channel
            if len(pending) >= CONFIRM_WINDOW:
                drain(CONFIRM_WINDOW // 2, 60.0)
        drain(0, 60.0)
        channel.close()
    if nacked:
        raise RuntimeError(f"the broker refused {nacked} publish(es)")


def publish_celery_tasks(
    broker_url: str,
    events: Sequence[dict[str, Any]],
    *,
    tag: str,
    task_name: str,
) -> None:
    """Each event as a Celery task message, the way a Celery implementation routes them."""
    from celery import Celery

    producer_app = Celery("bench-producer", broker=broker_url, set_as_current=False)
    with producer_app.producer_or_acquire() as producer:
        for index, event in enumerate(events):
            producer_app.send_task(task_name, args=[stamp(event, tag, index)], producer=producer)
    producer_app.close()


# --- systems under test -----------------------------------------------------------------------


class System(Protocol):
    name: str
    description: str

    def start(self, broker_url: str, sandbox_url: str) -> int:
        """Start the worker; returns its process id once it consumes."""
        ...

    def stop(self) -> None: ...

    def publish(self, broker_url: str, events: Sequence[dict[str, Any]], *, tag: str) -> None: ...


class _ChildSystem:
    """A system that runs as one child process: ``_launch`` starts it, ``stop`` ends it."""

    #: Seconds a warm shutdown may take before the child is killed.
    stop_timeout = 30.0

    def __init__(self) -> None:
        self._child: ChildProcess | None = None

    def _launch(self, child: ChildProcess, *, timeout: float) -> int:
        self._child = child.start(timeout=timeout)
        return self._child.pid

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop(timeout=self.stop_timeout)
            self._child = None


class Ccsync(_ChildSystem):
    name = "ccsync"
    #: Worker processes (``--processes``), given explicitly: the CLI's default is one per core.
    processes = 1

    def __init__(self, concurrency: int, loglevel: str = "INFO", *, name: str = "ccsync") -> None:
        self.name = name
        self.concurrency = concurrency
        self.loglevel = loglevel
        default = " (the CLI default)" if concurrency == DEFAULT_CONCURRENCY else ""
        self.description = (
            f"`ccsync worker --processes=1 --concurrency={concurrency}`{default}: {concurrency} "
            f"calls in flight, log level {loglevel}, as shipped"
        )
        super().__init__()

    def env(self, broker_url: str, sandbox_url: str) -> dict[str, str]:
        return {
            "CCSYNC_BROKER_URL": broker_url,
            "CCSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "CLOUDCOCKPIT_BASE_URL": sandbox_url,
            "CLOUDCOCKPIT_TOKEN": TOKEN,
            "CLOUDCOCKPIT_TENANT": TENANT,
            "SENTRY_DSN": "",
        }

    def start(self, broker_url: str, sandbox_url: str) -> int:
        flush_redis_db(REDIS_DB)
        worker = LocalWorker(
            self.env(broker_url, sandbox_url),
            concurrency=self.concurrency,
            loglevel=self.loglevel,
            processes=self.processes,
        )
        return self._launch(worker, timeout=60 + 60 * self.processes)

    def stop(self) -> None:
        super().stop()
        flush_redis_db(REDIS_DB)

    def publish(self, broker_url: str, events: Sequence[dict[str, Any]], *, tag: str) -> None:
        publish_plain(broker_url, events, tag=tag)


class CcsyncPair(Ccsync):
    """``ccsync worker --processes=2``: two workers under one parent on this machine (scale-out).
    The parent's process tree is sampled, so both workers' memory and CPU count."""

    stop_timeout = 60.0
    processes = 2

    def __init__(self, concurrency: int, *, name: str = "ccsync-2x32") -> None:
        super().__init__(concurrency, name=name)
        self.description = (
            f"`ccsync worker --processes=2 --concurrency={concurrency}`: two workers under one "
            "parent on this machine, consuming the same queue (scale-out); memory and CPU of all"
        )


class Bare(_ChildSystem):
    name = "bare"
    module = "bench.bare"
    threads = "threads"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.description = (
            f"kombu consumer (prefetch {2 * concurrency}), {concurrency} {self.threads} sharing "
            "one httpx client, classic queue, ack after the call"
        )
        super().__init__()

    def start(self, broker_url: str, sandbox_url: str) -> int:
        argv = [
            sys.executable,
            "-m",
            self.module,
            f"--broker={broker_url}",
            f"--base-url={sandbox_url}",
            f"--token={TOKEN}",
            f"--tenant={TENANT}",
            f"--concurrency={self.concurrency}",
        ]
        child = child_process(argv, env={}, ready_marker=bare.READY, name="the bare worker")
        return self._launch(child, timeout=60)

    def publish(self, broker_url: str, events: Sequence[dict[str, Any]], *, tag: str) -> None:
        publish_plain(broker_url, events, tag=tag)


class BareGevent(Bare):
    """The bare loop with gevent's monkey patching: greenlets instead of OS threads."""

    name = "bare-gevent"
    module = "bench.bare_gevent"
    threads = "greenlets (gevent)"


class _CeleryBaseline(_ChildSystem):
    """A Celery worker of ``bench/<module>.py``, fed one task message per event."""

    name: str
    #: The baseline's module: its Celery app, ``TASK_NAME`` and ``READY`` line.
    module: ModuleType
    pool: tuple[str, ...] = ()

    def start(self, broker_url: str, sandbox_url: str) -> int:
        argv = [sys.executable, "-m", "celery", "-A", self.module.__name__, "worker", *self.pool]
        env = {
            "BENCH_BROKER_URL": broker_url,
            "BENCH_BASE_URL": sandbox_url,
            "BENCH_TOKEN": TOKEN,
            "BENCH_TENANT": TENANT,
        }
        child = child_process(
            argv, env=env, ready_marker=self.module.READY, name=f"the {self.module.__name__} worker"
        )
        return self._launch(child, timeout=90)

    def publish(self, broker_url: str, events: Sequence[dict[str, Any]], *, tag: str) -> None:
        publish_celery_tasks(broker_url, events, tag=tag, task_name=self.module.TASK_NAME)


class FairCelery(_CeleryBaseline):
    """``bench/fair_celery.py``: threads pool, 32 threads, one shared httpx client, acks_late."""

    name = "celery"
    module = fair_celery
    pool = (
        "-P",
        "threads",
        "-c",
        str(fair_celery.THREADS),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    )
    concurrency = fair_celery.THREADS
    description = (
        f"Celery task per event, `-P threads -c {fair_celery.THREADS}`, `acks_late`, one "
        "httpx client shared by the threads (a connection each), default prefetch"
    )


class NaiveCelery(_CeleryBaseline):
    """``bench/naive_celery.py``: prefork at its defaults, a new httpx client per call."""

    name = "naive"
    module = naive_celery
    description = (
        f"Celery task per event, prefork pool, default concurrency ({os.cpu_count()} here), "
        "new httpx client per call"
    )


# --- reading the journal ----------------------------------------------------------------------


@dataclass
class Observed:
    """What the sandbox saw of one run's events."""

    published_at: dict[int, float] = field(default_factory=dict)
    received_at: dict[int, float] = field(default_factory=dict)
    responded_at: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    failed_calls: int = 0
    stalled: bool = False


def collect(
    control: SandboxControl,
    tag: str,
    *,
    expected: int,
    timeout: float,
    stall_after: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> Observed:
    """Polls the journal until every event got a 2xx PATCH, nothing moves, or time is up."""
    observed = Observed()
    cursor: int | None = None
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()
    while len(observed.received_at) < expected:
        now = time.monotonic()
        if now > deadline or now - last_progress > stall_after:
            observed.stalled = True
            break
        before = len(observed.received_at)
        for entry in control.journal(since=cursor):
            cursor = entry["seq"]
            if entry["method"] != "PATCH" or not isinstance(entry["body"], dict):
                continue
            parsed = parse_stamp(entry["body"].get("internalIdentifier"), tag)
            if parsed is None:
                continue
            index, published = parsed
            status = entry["status"] or 0
            if not 200 <= status < 300:
                observed.failed_calls += 1
            elif index in observed.received_at:
                observed.duplicates += 1
            else:
                observed.published_at[index] = published
                observed.received_at[index] = entry["receivedAt"]
                observed.responded_at[index] = entry["respondedAt"]
        if len(observed.received_at) > before:
            last_progress = time.monotonic()
            if on_progress is not None:
                on_progress(len(observed.received_at))
        if len(observed.received_at) < expected:
            time.sleep(0.5)
    return observed


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    system: str
    latency_ms: int
    concurrency: str
    events: int
    completed: int
    duplicates: int
    failed_calls: int
    elapsed_s: float
    publish_s: float
    throughput: float
    p50_ms: float
    p99_ms: float
    ready_rss_mb: float
    peak_rss_mb: float
    worker_cpu_ms_per_event: float
    broker_cpu_ms_per_event: float
    redis_cpu_ms_per_event: float
    sandbox_cpu_ms_per_event: float
    machine_cpu_pct: float
    ramp_ms: float = math.nan
    steady_throughput: float = math.nan
    note: str = ""
    round: int = 1


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def arrival_shape(
    first_publish: float, arrivals: Sequence[float], slots: int
) -> tuple[float, float]:
    """(ramp ms, steady events/s) of one run's PATCH arrival times (epoch seconds).

    The ramp is first publish to the moment ``slots`` calls have arrived, i.e. every thread has
    started calling. The steady rate counts the arrivals between the 10th and the 90th
    percentile, leaving out the ramp and the tail, which every run pays once whatever its length.
    """
    ordered = sorted(arrivals)
    if len(ordered) < max(slots, 10):
        return math.nan, math.nan
    ramp = (ordered[slots - 1] - first_publish) * 1000
    low, high = len(ordered) // 10, len(ordered) * 9 // 10
    span = ordered[high] - ordered[low]
    return round(ramp, 1), round((high - low) / span, 1) if span > 0 else math.nan


def run_once(
    system: System,
    concurrency_label: str,
    sandbox_url: str,
    latency_ms: int,
    events: int,
    *,
    during: Callable[[int], Callable[[], None]] | None = None,
    sandbox_pid: int | None = None,
    note: str = "",
) -> RunResult:
    """Measure one system at one latency from a fresh vhost; cleans up whatever happens.

    ``during(pid)`` is called just before publishing and returns a function called once every
    event arrived (a profiler, for instance).
    """
    tag = uuid.uuid4().hex[:10]
    batch = make_events(events, tag)
    with SandboxControl(sandbox_url, timeout=60) as control, Vhost(f"{system.name}-{tag}") as vhost:
        control.clear_journal()
        control.clear_faults()
        control.configure(latency_ms=latency_ms, auto_create_customers=True)
        sampler: TreeSampler | None = None
        try:
            pid = system.start(vhost.url, sandbox_url)
            sampler = TreeSampler(pid).start()
            time.sleep(1.0)  # let the worker settle: the idle RSS is its ready state
            ready_rss = sampler.last
            finish = during(pid) if during is not None else None
            others = {
                "broker": pids_named("beam.smp"),
                "redis": pids_named("redis-server"),
                "sandbox": [] if sandbox_pid is None else [sandbox_pid],
            }
            others_before = {name: cpu_seconds(pids) for name, pids in others.items()}
            cpu_before, machine_before = cpu_seconds(sampler.pids), machine_cpu()
            started = time.time()
            system.publish(vhost.url, batch, tag=tag)
            publish_s = time.time() - started
            timeout = 60.0 + events / 5.0
            observed = collect(control, tag, expected=events, timeout=timeout)
            cpu_after, machine_after = cpu_seconds(sampler.pids), machine_cpu()
            others_after = {name: cpu_seconds(pids) for name, pids in others.items()}
            if finish is not None:
                finish()
        finally:
            try:
                system.stop()
            finally:
                if sampler is not None:
                    sampler.stop()
    assert sampler is not None
    completed = len(observed.received_at)
    first_publish = min(observed.published_at.values(), default=started)
    last_done = max(observed.responded_at.values(), default=first_publish)
    elapsed = max(last_done - first_publish, 1e-9)
    latencies = [
        (observed.received_at[i] - observed.published_at[i]) * 1000 for i in observed.received_at
    ]
    ramp_ms, steady = arrival_shape(
        first_publish, list(observed.received_at.values()), int(concurrency_label)
    )
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    notes = [note] if note else []

    def per_event(name: str) -> float:
        if not others[name]:
            return math.nan
        return round((others_after[name] - others_before[name]) * 1000 / max(completed, 1), 3)

    if observed.stalled:
        notes.append(f"INCOMPLETE: {completed}/{events} arrived")
    return RunResult(
        system=system.name,
        latency_ms=latency_ms,
        concurrency=concurrency_label,
        events=events,
        completed=completed,
        duplicates=observed.duplicates,
        failed_calls=observed.failed_calls,
        elapsed_s=round(elapsed, 3),
        publish_s=round(publish_s, 3),
        throughput=round(completed / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        ready_rss_mb=round(ready_rss / 2**20, 1),
        peak_rss_mb=round(sampler.peak / 2**20, 1),
        worker_cpu_ms_per_event=round((cpu_after - cpu_before) * 1000 / max(completed, 1), 3),
        broker_cpu_ms_per_event=per_event("broker"),
        redis_cpu_ms_per_event=per_event("redis"),
        sandbox_cpu_ms_per_event=per_event("sandbox"),
        machine_cpu_pct=round(100 * busy / total, 1) if total else math.nan,
        ramp_ms=ramp_ms,
        steady_throughput=steady,
        note="; ".join(notes),
    )
