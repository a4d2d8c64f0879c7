"""The ``ccsync`` command (contract section 6): a thin layer over functions tests call directly.

Every command fails the same way, in one line (``worker.cli.failures``).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import click

from worker.amqp.connection import broker_connection, connect_within
from worker.amqp.event_publishing import (
    Encoding,
    check_native_events,
    new_event,
    publish_events,
)
from worker.cli.event_files import read_event_argument
from worker.cli.failures import EXIT_STATUS_EPILOG, OneLineFailures
from worker.cli.settings import command_settings
from worker.cli.types import CUSTOMER_ID, PORT
from worker.constants import BACKFILL_ROUTING_KEY, EVENT_ROUTING_KEY
from worker.settings import DEFAULT_CONCURRENCY, default_processes

#: The names ``--loglevel`` accepts, in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group(cls=OneLineFailures, epilog=EXIT_STATUS_EPILOG)
@click.version_option(package_name="ccsync", prog_name="ccsync")
def main() -> None:
    """ccsync: customer internal identifier events from RabbitMQ to CloudCockpit.

    Settings come from the environment (CCSYNC_*, CLOUDCOCKPIT_*; docs/contract.md, section 5):
    ccsync config prints them, secrets masked.
    """


@main.command()
@click.option(
    "--processes",
    default=default_processes,
    type=click.IntRange(min=1),
    envvar="CCSYNC_PROCESSES",
    show_envvar=True,
    show_default="one per core",
    help="Worker processes under one parent, each a full worker (and Celery node); 1: no parent.",
)
@click.option(
    "--concurrency",
    default=DEFAULT_CONCURRENCY,
    type=click.IntRange(min=1),
    envvar="CCSYNC_CONCURRENCY",
    show_envvar=True,
    show_default=True,
    help="Calls in flight at once, in each process.",
)
@click.option(
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    envvar="CCSYNC_LOGLEVEL",
    show_envvar=True,
    show_default=True,
)
@click.option("-E", "--task-events", is_flag=True, help="Send Celery task events (Flower).")
@click.option("--heartbeat", is_flag=True, help="Send Celery worker heartbeats (events).")
@click.option("--gossip", is_flag=True, help="Celery gossip with other workers.")
@click.option("--mingle", is_flag=True, help="Celery mingle with other workers at start.")
@click.option(
    "-n",
    "--hostname",
    default=None,
    help="Celery node name, NAME@HOST (default: ccsync.<pid>@<host name>); with several "
    "processes, each is NAME.<index>@HOST.",
)
def worker(
    processes: int,
    concurrency: int,
    loglevel: str,
    task_events: bool,
    heartbeat: bool,
    gossip: bool,
    mingle: bool,
    hostname: str | None,
) -> None:
    """Run the consumer (a Celery worker with a pool of threads), in each of its processes.

    With more than one process, the parent forwards SIGTERM and SIGINT (a second one kills),
    starts a process that died again, and serves the endpoints of CCSYNC_METRICS_PORT for all.
    """
    if processes > 1:
        from worker.runtime.processes import run_processes

        flags = {
            "--task-events": task_events,
            "--heartbeat": heartbeat,
            "--gossip": gossip,
            "--mingle": mingle,
        }
        arguments = [
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            *[flag for flag, given in flags.items() if given],
        ]
        sys.exit(
            run_processes(command_settings(), processes, arguments, loglevel, node_name=hostname)
        )
    from worker.runtime.app import CeleryExtras, run_worker
    from worker.runtime.processes import stop_with_parent

    stop_with_parent()  # a child of a parent (above) ends with it
    extras = CeleryExtras(
        task_events=task_events, heartbeat=heartbeat, gossip=gossip, mingle=mingle
    )
    run_worker(command_settings(), concurrency, loglevel, extras=extras, node_name=hostname)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, type=PORT, show_default=True)
@click.option("--client-id", default="sandbox-client", show_default=True)
@click.option("--client-secret", default="sandbox-secret", show_default=True)
@click.option(
    "--static-token", multiple=True, help="A bearer token accepted as is [default: sandbox-token]."
)
@click.option("--latency-ms", default=0, type=click.IntRange(min=0), show_default=True)
def sandbox(
    host: str,
    port: int,
    client_id: str,
    client_secret: str,
    static_token: tuple[str, ...],
    latency_ms: int,
) -> None:
    """Serve a local stand-in for CloudCockpit's API."""
    from worker.sandbox import SandboxOptions, run_sandbox

    run_sandbox(
        host,
        port,
        SandboxOptions(
            client_id=client_id,
            client_secret=client_secret,
            static_tokens=list(static_token) or ["sandbox-token"],
            latency_ms=latency_ms,
        ),
    )


@main.command()
@click.option("--customer", "customer_id", type=CUSTOMER_ID, help="Publish one event for it.")
@click.option("--identifier", "internal_identifier", help="The new internal identifier.")
@click.option("--clear", is_flag=True, help="Publish a null identifier (clears it).")
@click.option("--tenant")
@click.option("--reseller", "reseller_id", type=click.UUID)
@click.option("--event-id")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="Events from a JSON file (object or list) or JSON lines; '-' for standard input.",
)
@click.option(
    "--encoding",
    type=click.Choice([e.value for e in Encoding]),
    default="native",
    show_default=True,
)
@click.option(
    "--no-validate",
    is_flag=True,
    help="Publish events as given, even invalid ones (to exercise the dead-letter path).",
)
@click.option(
    "--backfill",
    is_flag=True,
    help="Publish to the backfill lane (ccsync.backfill): bulk traffic, served after live events.",
)
def publish(
    customer_id: uuid.UUID | None,
    internal_identifier: str | None,
    clear: bool,
    tenant: str | None,
    reseller_id: uuid.UUID | None,
    event_id: str | None,
    path: Path | None,
    encoding: str,
    no_validate: bool,
    backfill: bool,
) -> None:
    """Publish events to customer-events the way a producer would.

    Every event is validated before anything is published (ccsync validate tells each fault).
    """
    if path is not None:
        events = read_event_argument(path)
    elif customer_id is not None:
        if internal_identifier is None and not clear:
            raise click.UsageError("give --identifier VALUE or --clear")
        events = [
            new_event(
                customer_id,
                None if clear else internal_identifier,
                tenant=tenant,
                reseller_id=reseller_id,
                event_id=event_id,
            )
        ]
    else:
        raise click.UsageError("give --customer (with --identifier or --clear) or --file")
    if not no_validate:  # before connecting: nothing is published unless every event is valid
        check_native_events(events, where=str(path) if path else "the event of the options")
    settings = command_settings()
    with broker_connection(settings) as connection:
        connect_within(connection, settings.broker_connect_timeout)
        count = publish_events(
            connection,
            events,
            Encoding(encoding),
            routing_key=BACKFILL_ROUTING_KEY if backfill else EVENT_ROUTING_KEY,
        )
    click.echo(f"published {count} event(s)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8091, type=PORT, show_default=True)
def ingest(host: str, port: int) -> None:
    """Accept events over HTTP (POST /v1/events) and publish them to customer-events."""
    from worker.ingest import run_ingest

    run_ingest(command_settings(), host=host, port=port)


@main.command()
@click.option(
    "--timeout",
    default=90.0,
    type=click.FloatRange(min=0, min_open=True),
    show_default=True,
    help="Seconds to wait for outcomes.",
)
def demo(timeout: float) -> None:
    """Run the whole pipeline once: sandbox, worker, sample events, and a summary."""
    from worker.cli.demo import run_demo

    sys.exit(run_demo(command_settings(), timeout))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, type=PORT, show_default=True)
def console(host: str, port: int) -> None:
    """Serve the dead-letter console; operators log in with CCSYNC_CONSOLE_TOKEN."""
    from worker.console import run_console

    run_console(command_settings(), host, port)


from worker.cli.dlq import dlq  # noqa: E402 (the group is attached once main exists)

main.add_command(dlq)


from worker.cli.ops import health, topology  # noqa: E402 (operator commands live in ops_cli)

main.add_command(health)
main.add_command(topology)


from worker.cli.pause import pause, resume  # noqa: E402 (operators' pause of the deployment)

main.add_command(pause)
main.add_command(resume)


from worker.cli.verify import verify  # noqa: E402 (reads CloudCockpit back and compares)

main.add_command(verify)


from worker.cli.config import config  # noqa: E402 (the effective settings, secrets masked)
from worker.cli.validate import validate  # noqa: E402 (integration teams check their events)

main.add_command(config)
main.add_command(validate)


from worker.cli.events import events  # noqa: E402 (where is my event?)

main.add_command(events)


def _epilog_everywhere(group: click.Group) -> None:
    """Every command's help ends with the exit statuses, as the group's does."""
    for command in group.commands.values():
        command.epilog = command.epilog or EXIT_STATUS_EPILOG
        if isinstance(command, click.Group):
            _epilog_everywhere(command)


_epilog_everywhere(main)
