"""``ccsync demo``: the whole pipeline once, against the bundled sandbox, with a summary.

Publishes sample events in all three encodings plus a few that must fail, scripts the sandbox to
fail some calls, runs a real worker, waits until every event is applied or dead-lettered, prints
what happened, and removes its own dead letters again.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click
from kombu import Connection

from worker.amqp.connection import broker_connection, connect_within
from worker.amqp.event_publishing import Encoding, encode, new_event, publish_raw
from worker.amqp.topology import declare_topology
from worker.dead_letter_queue.reading import hold
from worker.events import correlation_id
from worker.sandbox import SandboxOptions, SandboxServer
from worker.settings import Settings
from worker.testing import LocalWorker

DEMO_TENANT = "demo.cloudcockpit.local"
RUN_HEADER = "x-demo-run"


@dataclass
class Plan:
    """What is published, and what each event is expected to become."""

    messages: list[tuple[bytes, str | None, dict[str, Any]]] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)


def _plan(run: str) -> tuple[Plan, dict[str, list[dict[str, Any]]]]:
    plan = Plan()
    faults: dict[str, list[dict[str, Any]]] = {}

    def add(encoding: Encoding, outcome: str, script: list[dict[str, Any]] | None = None) -> None:
        customer = uuid.uuid4()
        event = new_event(customer, f"DEMO-{len(plan.messages):03d}", source="ccsync-demo")
        body, content_type, headers = encode(event, encoding)
        plan.messages.append((body, content_type, {**headers, RUN_HEADER: run}))
        plan.expected[event["eventId"]] = outcome
        plan.counts[encoding.value] += 1
        if script:
            faults[str(customer)] = script

    for _ in range(20):
        add(Encoding.NATIVE, "applied")
    for _ in range(3):
        add(Encoding.STRUCTURED, "applied")
        add(Encoding.BINARY, "applied")
    add(Encoding.NATIVE, "applied", [{"status": 500}, {"status": 500}])
    add(Encoding.NATIVE, "applied", [{"status": 429, "retryAfter": 1}])
    add(Encoding.NATIVE, "applied", [{"drop": True}])
    add(Encoding.NATIVE, "api-rejected", [{"status": 404}])
    add(Encoding.NATIVE, "retries-exhausted", [{"status": 503, "times": 3}])

    bad_uuid = new_event(uuid.uuid4(), "X")
    bad_uuid["customerId"] = "not-a-uuid"
    plan.messages.append((*encode(bad_uuid, Encoding.NATIVE)[:2], {RUN_HEADER: run}))
    plan.expected[bad_uuid["eventId"]] = "invalid-event"
    plan.messages.append((b'{"eventId": "broken', "application/json", {RUN_HEADER: run}))
    plan.counts["invalid"] += 2
    return plan, faults


def run_demo(settings: Settings, timeout: float) -> int:
    run = uuid.uuid4().hex[:12]
    plan, faults = _plan(run)
    with SandboxServer(SandboxOptions()) as sandbox:
        control = sandbox.control()
        for customer, script in faults.items():
            control.add_faults(customer, *script)
        env = {
            "CCSYNC_BROKER_URL": settings.broker_url,
            "CLOUDCOCKPIT_BASE_URL": sandbox.url,
            "CLOUDCOCKPIT_TOKEN_URL": f"{sandbox.url}/oauth2/v2.0/token",
            "CLOUDCOCKPIT_CLIENT_ID": sandbox.options.client_id,
            "CLOUDCOCKPIT_CLIENT_SECRET": sandbox.options.client_secret,
            "CLOUDCOCKPIT_TOKEN": "",
            "CLOUDCOCKPIT_TENANT": DEMO_TENANT,
            "CCSYNC_RETRY_DELAYS": "1,2",
        }
        click.echo(f"sandbox at {sandbox.url}; starting a worker on {_safe(settings.broker_url)}")
        # Before the worker starts: a broker holding another version's topology stops the demo
        # with one line here, rather than in the worker's log.
        with broker_connection(settings) as connection:
            connect_within(connection, settings.broker_connect_timeout)
            declare_topology(connection)
        with (
            LocalWorker(env, concurrency=8, loglevel="WARNING"),
            broker_connection(settings) as connection,
        ):
            connect_within(connection, settings.broker_connect_timeout)
            publish_raw(connection, plan.messages)
            click.echo(f"published {len(plan.messages)} messages: {dict(plan.counts)}")
            applied, dead = _wait(connection, control, plan, run=run, timeout=timeout)
        return _report(plan, applied=applied, dead=dead, journal=control.journal())


def _wait(
    connection: Connection, control: Any, plan: Plan, *, run: str, timeout: float
) -> tuple[dict[str, int], list[Mapping[str, Any]]]:
    by_correlation = {
        str(correlation_id(DEMO_TENANT, event_id)): event_id for event_id in plan.expected
    }
    deadline = time.monotonic() + timeout
    while True:
        attempts: Counter[str] = Counter()
        applied: dict[str, int] = {}
        for entry in control.journal():
            event_id = by_correlation.get(entry["headers"].get("x-correlation-id", ""))
            if event_id and entry["method"] == "PATCH":
                attempts[event_id] += 1
                if entry["status"] == 204:
                    applied[event_id] = attempts[event_id]
        with hold(connection) as held:
            ours = [r for r in held.records if r.headers.get(RUN_HEADER) == run]
            done = len(applied) + len(ours) >= len(plan.messages)
            if done or time.monotonic() > deadline:
                for record in ours:  # the demo leaves the dead-letter queue as it found it
                    held.remove(record)
                return applied, [{**r.summary(), "retries": 0} for r in ours]
        time.sleep(0.5)


def _report(
    plan: Plan, *, applied: dict[str, int], dead: list[Mapping[str, Any]], journal: list[Any]
) -> int:
    retried = sum(1 for attempts in applied.values() if attempts > 1)
    reasons = Counter(str(letter["reason"]) for letter in dead)
    click.echo("")
    click.echo("ccsync demo summary")
    click.echo(f"  published      {len(plan.messages):4d}")
    click.echo(f"  applied        {len(applied):4d}  ({retried} after a retry)")
    click.echo(f"  dead-lettered  {len(dead):4d}")
    for letter in dead:
        click.echo(
            f"    {letter['reason']:<18} {letter['eventId'] or '(no eventId)'}: {letter['error']}"
        )
    patches = sum(1 for entry in journal if entry["method"] == "PATCH")
    click.echo(f"  API calls      {patches:4d}  (PATCH, retries included)")
    lost = len(plan.messages) - len(applied) - len(dead)
    expected_dead = Counter(o for o in plan.expected.values() if o != "applied")
    expected_dead["invalid-event"] += 1  # the malformed message has no eventId to plan by
    ok = lost == 0 and reasons == expected_dead
    click.echo(f"  lost           {lost:4d}")
    click.echo(
        "result: " + ("OK" if ok else f"UNEXPECTED (dead letters by reason: {dict(reasons)})")
    )
    return 0 if ok else 1


def _safe(url: str) -> str:
    """The broker URL without its password, for printing."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}" if at else url
