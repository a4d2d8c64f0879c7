"""Operator commands of ``ccsync``: ``health`` (for probes) and ``topology`` (print or apply)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from worker.amqp.connection import broker_connection, connect_within
from worker.amqp.migration import migrate_dead_letter_queue
from worker.amqp.topology import declare_topology
from worker.cli.settings import command_settings
from worker.constants import DEAD_LETTER_QUEUE
from worker.exceptions import ConfigurationError, LedgerUnavailable
from worker.observability.redaction import Redaction
from worker.ops.health import DEFAULT_TIMEOUT, CheckResult, failing_parts, run_checks
from worker.ops.topology_export import Topology, record_topology, topology_json
from worker.processing.pause import PauseStore, virtual_host
from worker.settings import Settings, load_settings


@click.command()
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds each part may take; the parts are checked at once.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the parts and consumption.")
def health(timeout: float, as_json: bool) -> None:
    """Check broker, Redis, token and API; exit 1 naming what failed (for probes)."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        results = [CheckResult("settings", ok=False, detail=str(exc))]
        _echo_health(results, consumption=None, as_json=as_json)
        raise click.ClickException("unhealthy: settings") from None
    results = run_checks(settings, timeout)
    failed = failing_parts(results)
    consumption = None if "redis" in failed else consumption_line(settings, timeout)
    _echo_health(results, consumption=consumption, as_json=as_json)
    if failed:
        raise click.ClickException(f"unhealthy: {', '.join(failed)}")


def _echo_health(results: list[CheckResult], *, consumption: str | None, as_json: bool) -> None:
    if as_json:
        parts = [dataclasses.asdict(result) for result in results]
        healthy = not failing_parts(results)
        click.echo(json.dumps({"healthy": healthy, "parts": parts, "consumption": consumption}))
        return
    for result in results:
        click.echo(result.line())
    if consumption is not None:
        click.echo(consumption)


def consumption_line(settings: Settings, timeout: float) -> str:
    """Whether the deployment is paused (``ccsync pause``): not a failure, a paused worker is
    healthy; it says who paused it, when and why."""
    store = PauseStore.from_url(
        settings.redis_url, deployment=virtual_host(settings.broker_url), timeout=timeout
    )
    try:
        pause = store.read()
    except LedgerUnavailable as exc:
        return Redaction.from_settings(settings).text(f"consumption unknown: {exc}")
    finally:
        store.close()
    if pause is None:
        return "consumption running"
    return f"consumption PAUSED: {pause.describe()} (ccsync resume lifts it)"


@click.command()
@click.option("--apply", "apply_", is_flag=True, help="Declare it on CCSYNC_BROKER_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.option(
    "--migrate",
    is_flag=True,
    help="Move the ccsync.dead-letter of earlier versions to this version's queue, then apply.",
)
def topology(apply_: bool, as_json: bool, migrate: bool) -> None:
    """Print the broker topology ccsync declares, or apply it (idempotent)."""
    recorded = record_topology()
    if migrate:
        settings = command_settings()
        try:
            with broker_connection(settings) as connection:
                connect_within(connection, settings.broker_connect_timeout)
                report = migrate_dead_letter_queue(connection, on_progress=click.echo)
        except Exception as exc:
            text = Redaction.from_settings(settings).text(f"{type(exc).__name__}: {exc}")
            raise click.ClickException(f"could not migrate the topology: {text}") from None
        if report.already_current and not report.moved_back:
            click.echo(f"{DEAD_LETTER_QUEUE} has this version's form already: nothing to migrate")
        apply_ = True
    if apply_:
        settings = command_settings()
        try:
            with broker_connection(settings) as connection:
                connect_within(connection, settings.broker_connect_timeout)
                declare_topology(connection)
        except Exception as exc:
            text = Redaction.from_settings(settings).text(f"{type(exc).__name__}: {exc}")
            raise click.ClickException(f"could not apply the topology: {text}") from None
        click.echo(
            f"applied {len(recorded.exchanges)} exchanges, {len(recorded.queues)} queues, "
            f"{len(recorded.bindings)} bindings",
            err=as_json,
        )
        if not as_json:
            return
    if as_json:
        click.echo(json.dumps(topology_json(recorded), indent=2))
    else:
        click.echo(render_topology(recorded))


def render_topology(topology: Topology) -> str:
    lines = ["exchanges:"]
    lines += [
        f"  {e.name}  {e.type}{_flags(e.durable, e.auto_delete)}{_arguments(e.arguments)}"
        for e in topology.exchanges
    ]
    lines.append("queues:")
    lines += [
        f"  {q.name}{_flags(q.durable, q.auto_delete)}{_arguments(q.arguments)}"
        for q in topology.queues
    ]
    lines.append("bindings:")
    lines += [
        f"  {b.source} -> {b.destination_type} {b.destination}  key {b.routing_key!r}"
        f"{_arguments(b.arguments)}"
        for b in topology.bindings
    ]
    return "\n".join(lines)


def _flags(durable: bool, auto_delete: bool) -> str:
    return ("  durable" if durable else "  transient") + ("  auto-delete" if auto_delete else "")


def _arguments(arguments: dict[str, Any]) -> str:
    return "".join(f"  {key}={value}" for key, value in arguments.items())
