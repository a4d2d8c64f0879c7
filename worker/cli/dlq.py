"""``ccsync dlq``: inspect, replay, purge, export and import dead letters (contract section 6).

Thin on purpose: each command parses its options into a ``DeadLetterFilter`` and calls one
function of ``worker.dead_letter_queue``, which the tests call directly too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import KombuError

from worker.amqp.connection import broker_connection, connect_within
from worker.cli.interrupt import EXIT_INTERRUPTED, stop_requested
from worker.cli.settings import command_settings
from worker.cli.types import CUSTOMER_ID, RATE, TIMESTAMP
from worker.constants import (
    REASON_API_REJECTED,
    REASON_DELIVERY_LIMIT,
    REASON_INVALID_EVENT,
    REASON_RETRIES_EXHAUSTED,
)
from worker.dead_letter_queue.edit import parse_assignments
from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.filters import DeadLetterFilter, select
from worker.dead_letter_queue.keeper import Keeper
from worker.dead_letter_queue.purge import PurgeReport
from worker.dead_letter_queue.render import (
    STATS_COLUMNS,
    STORED_COLUMNS,
    Progress,
    describe,
    stats_row,
    stored_row,
    table,
)
from worker.dead_letter_queue.replay import ReplayReport
from worker.dead_letter_queue.stats import group_stats
from worker.dead_letter_queue.store import STATES, WAITING, DeadLetterStore, StoreUnavailable
from worker.dead_letter_queue.stored_replay import purge_stored, replay_stored
from worker.dead_letter_queue.transfer import export_stored, import_dead_letters, read_lines
from worker.observability.redaction import Redaction

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

REASONS = (
    REASON_INVALID_EVENT,
    REASON_API_REJECTED,
    REASON_RETRIES_EXHAUSTED,
    REASON_DELIVERY_LIMIT,
)


def filter_options(command: F) -> F:
    """Adds the filter options; the command receives ``filters`` and ``limit`` instead."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["filters"] = DeadLetterFilter.build(
            reasons=kwargs.pop("reason"),
            statuses=kwargs.pop("status"),
            tenants=kwargs.pop("tenant"),
            customers=[str(customer) for customer in kwargs.pop("customer")],
            event_ids=kwargs.pop("event_id"),
            since=kwargs.pop("since"),
            until=kwargs.pop("until"),
        )
        return command(*args, **kwargs)

    options = [
        click.option("--reason", multiple=True, type=click.Choice(REASONS), help="Repeatable."),
        click.option(
            "--status",
            multiple=True,
            type=click.IntRange(min=100, max=599),
            help="Last HTTP status. Repeatable.",
        ),
        click.option("--tenant", multiple=True, help="The event's tenant. Repeatable."),
        click.option("--customer", multiple=True, type=CUSTOMER_ID, help="customerId. Repeatable."),
        click.option("--event-id", multiple=True, help="Repeatable."),
        click.option(
            "--since", type=TIMESTAMP, help="Dead-lettered at or after (ISO timestamp, UTC)."
        ),
        click.option("--until", type=TIMESTAMP, help="Dead-lettered before (ISO timestamp, UTC)."),
        click.option(
            "--limit", type=click.IntRange(min=0), help="At most this many matching dead letters."
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


@contextlib.contextmanager
def _broker() -> Iterator[Connection]:
    """The broker connection, with every failure turned into one line and a non-zero exit.

    Opened as the worker opens its own: each broker of ``CCSYNC_BROKER_URL`` in turn, for up to
    ``CCSYNC_BROKER_CONNECT_TIMEOUT`` seconds, so a command works while any node of the cluster
    does (``BrokerUnreachable``, one line, when none answered).
    """
    settings = command_settings()
    try:
        with broker_connection(settings) as connection:
            connect_within(connection, settings.broker_connect_timeout)
            yield connection
    except (DeadLetterError, AMQPError, KombuError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from None


@contextlib.contextmanager
def _store() -> Iterator[DeadLetterStore]:
    """The dead-letter store of ``CCSYNC_DLQ_STORE_URL``; unreachable, one line and exit 1."""
    try:
        with DeadLetterStore(command_settings().dlq_store_url) as store:
            yield store
    except StoreUnavailable as exc:
        raise click.ClickException(_one_line(exc)) from None


def _operator() -> str:
    """Who runs the command, as the history records it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _count_matching(filters: DeadLetterFilter, limit: int | None) -> int:
    with _store() as store:
        total = store.page(filters, size=0).total
    return total if limit is None else min(total, limit)


def _confirm(action: str, filters: DeadLetterFilter, limit: int | None) -> bool:
    """Asks before a bulk change; False when nothing matches (nothing to ask about)."""
    count = _count_matching(filters, limit)
    if count == 0:
        click.echo("no dead letters match")
        return False
    click.confirm(f"{action} {count} dead letter(s) ({filters.describe()})?", abort=True)
    return True


@click.group()
def dlq() -> None:
    """Inspect, replay and move dead letters (queue ccsync.dead-letter)."""


#: Dead letters a page of ``dlq list`` shows unless ``--limit`` says otherwise.
PAGE_SIZE = 100

STATE_CHOICES = (*STATES, "all")


def state_option(command: F) -> F:
    return click.option(
        "--state",
        type=click.Choice(STATE_CHOICES),
        default=WAITING,
        show_default=True,
        help="Waiting ones, or those replayed or purged (kept for CCSYNC_DLQ_RETENTION_DAYS).",
    )(command)


def _states(state: str) -> tuple[str, ...]:
    return STATES if state == "all" else (state,)


@dlq.command("list")
@filter_options
@state_option
@click.option("--page", type=click.IntRange(min=1), default=1, help="Which page (from 1).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(
    filters: DeadLetterFilter, limit: int | None, state: str, page: int, as_json: bool
) -> None:
    """List dead letters from the store, the oldest first, a page at a time (--limit a page)."""
    size = PAGE_SIZE if limit is None else limit
    with _store() as store:
        found = store.page(filters, number=page, size=size, states=_states(state))
    first = (page - 1) * size + 1
    footer = f"{first}-{first + len(found.letters) - 1} of {found.total} dead letter(s)"
    if found.more:
        footer += f"; --page {page + 1} for more"
    _echo_listing(
        found.letters,
        as_json=as_json,
        to_json=lambda letter: letter.summary(),
        columns=STORED_COLUMNS,
        row=stored_row,
        footer=footer,
    )


@dlq.command()
@click.argument("letter_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The dead letter and its history as JSON.")
def show(letter_id: str, as_json: bool) -> None:
    """One dead letter (ID from dlq list, or its first 12 characters) and its history: each
    dead-lettering of its event, each replay and purge."""
    with _store() as store:
        letter = store.get(letter_id)
        if letter is None:
            raise click.ClickException(f"no dead letter has the id {letter_id}")
        lettered, entries = store.history(letter)
    shown = describe(letter, lettered, entries)
    if as_json:
        click.echo(json.dumps(shown, ensure_ascii=False, default=str))
        return
    for key, value in shown.items():
        if key not in ("history", "body"):
            click.echo(f"{key}: {value}")
    click.echo(f"body: {shown['body']}")
    click.echo("history:")
    for line in shown["history"]:
        click.echo(f"  {line}")


@dlq.command()
@filter_options
@state_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group and line.")
def stats(filters: DeadLetterFilter, limit: int | None, state: str, as_json: bool) -> None:
    """Count dead letters by reason, HTTP status and API error type, oldest and newest."""
    with _store() as store:
        if limit is None:
            groups = store.stats(filters, states=_states(state))
        else:
            chosen = itertools.islice(store.matching(filters, states=_states(state)), limit)
            groups = group_stats(letter.record for letter in chosen)
    _echo_listing(
        groups,
        as_json=as_json,
        to_json=lambda group: group.to_json(),
        columns=STATS_COLUMNS,
        row=stats_row,
        footer=f"{sum(group.count for group in groups)} dead letter(s) in {len(groups)} group(s)",
    )


def _echo_listing(
    items: list[T],
    *,
    as_json: bool,
    to_json: Callable[[T], object],
    columns: list[str],
    row: Callable[[T], list[str]],
    footer: str,
) -> None:
    """One JSON object a line, or a table and its footer (a line saying so when none match)."""
    if as_json:
        for item in items:
            click.echo(json.dumps(to_json(item), ensure_ascii=False))
    elif not items:
        click.echo("no dead letters match")
    else:
        click.echo(table(columns, [row(item) for item in items]))
        click.echo(footer)


@dlq.command()
@filter_options
@click.option("--rate", type=RATE, help="At most this many replays per second.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Edit the event before replaying it (internalIdentifier, tenant, resellerId; "
    "the value null sets JSON null). Only with one --event-id.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
def replay(
    filters: DeadLetterFilter,
    limit: int | None,
    rate: float | None,
    dry_run: bool,
    assignments: tuple[str, ...],
    yes: bool,
    as_json: bool,
) -> None:
    """Publish dead letters to customer-events again; each is marked replayed once confirmed
    (kept as history for CCSYNC_DLQ_RETENTION_DAYS)."""
    try:
        edits = parse_assignments(assignments)
    except DeadLetterError as exc:
        raise click.UsageError(str(exc)) from None
    if edits and len(filters.event_ids) != 1:
        raise click.UsageError("--set edits one event: select it with exactly one --event-id")
    bulk = not filters.event_ids
    if bulk and not (yes or dry_run) and not _confirm("Replay", filters, limit):
        return
    # Installed after the prompt above, which Ctrl-C must still abort at once.
    with (
        stop_requested() as stop,
        _store() as store,
        _broker() as connection,
        Progress("replaying") as progress,
    ):
        if not dry_run:
            progress.total(_count_matching(filters, limit))
        report = replay_stored(
            store,
            connection,
            filters,
            who=_operator(),
            limit=limit,
            rate=rate,
            dry_run=dry_run,
            edits=edits,
            on_examined=progress.step,
            stop=stop,
        )
    if report.interrupted:
        click.echo(
            f"interrupted: replayed {report.replayed} dead letter(s); the rest wait in the store",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    if filters.event_ids and not report.matched:
        raise click.ClickException(f"no dead letter matches {filters.describe()}")
    if as_json:
        _echo_report(report, rate=report.rate)
    elif dry_run:
        for event_id in report.event_ids:
            click.echo(f"would replay {event_id or '(no eventId)'}")
        for body in report.edited_bodies:
            click.echo(f"edited body: {body.decode('utf-8', 'replace')}")
        click.echo(f"dry run: {report.matched} of {report.examined} dead letter(s) match")
    else:
        click.echo(
            f"replayed {report.replayed} of {report.matched} matching dead letter(s) "
            f"in {report.seconds:.1f}s ({report.rate:.0f}/s)"
        )
    if report.failed:
        raise click.ClickException(
            f"{report.failed} publish(es) were not confirmed; those dead letters wait in the store"
        )


@dlq.command()
@filter_options
@click.option("--dry-run", is_flag=True, help="Show what would be purged; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
def purge(
    filters: DeadLetterFilter, limit: int | None, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Mark the matching dead letters purged: out of the lists, kept as history for
    CCSYNC_DLQ_RETENTION_DAYS (``list --state purged``), then deleted by the keeper."""
    if not (yes or dry_run) and not _confirm("Delete", filters, limit):
        return
    with _store() as store:
        report = purge_stored(store, filters, who=_operator(), limit=limit, dry_run=dry_run)
    if as_json:
        _echo_report(report)
    elif dry_run:
        for event_id in report.event_ids:
            click.echo(f"would purge {event_id or '(no eventId)'}")
        click.echo(f"dry run: {report.matched} of {report.examined} dead letter(s) match")
    else:
        click.echo(f"purged {report.purged} dead letter(s)")


def _echo_report(report: ReplayReport | PurgeReport, **extra: float) -> None:
    """A replay's or purge's outcome, counts and event ids, as one JSON object (edited bodies
    as text)."""
    outcome: dict[str, Any] = dataclasses.asdict(report) | extra
    if "edited_bodies" in outcome:
        outcome["edited_bodies"] = [b.decode("utf-8", "replace") for b in outcome["edited_bodies"]]
    click.echo(json.dumps(outcome, ensure_ascii=False))


@dlq.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@filter_options
@state_option
@click.option("--remove", is_flag=True, help="Mark them purged once written and synced.")
def export(
    file: str, filters: DeadLetterFilter, limit: int | None, state: str, remove: bool
) -> None:
    """Write dead letters to FILE as JSON lines ('-' for stdout); FILE must not exist yet."""
    if file != "-" and Path(file).exists():
        # Never overwrite: an earlier export --remove may be all that is left of those letters.
        raise click.ClickException(f"{file} exists; export writes only new files")
    with (
        _store() as store,
        click.open_file(file, "x" if file != "-" else "w", encoding="utf-8") as out,
    ):
        try:
            report = export_stored(
                store,
                filters,
                out,
                redaction=Redaction.from_settings(command_settings()),
                who=_operator(),
                limit=limit,
                remove=remove,
                states=_states(state),
            )
        except DeadLetterError as exc:
            raise click.ClickException(_one_line(exc)) from None
    done = f"exported {report.written} dead letter(s)"
    if remove:
        done += f", marked {report.removed} purged"
    click.echo(done, err=file == "-")


@dlq.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@filter_options
@click.option(
    "--dry-run", is_flag=True, help="Read FILE and show what would be imported; publish nothing."
)
def import_command(file: str, filters: DeadLetterFilter, limit: int | None, dry_run: bool) -> None:
    """Publish the dead letters of FILE (as written by export) into ccsync.dead-letter, from
    where the keeper moves them into the store."""
    try:
        with click.open_file(file, "r", encoding="utf-8") as lines:
            records = read_lines(lines)
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror or exc}") from None
    except DeadLetterError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    if dry_run:  # no broker needed: the file and the filters say it all
        chosen = list(select(records, filters, limit=limit))
        for record in chosen:
            click.echo(f"would import {record.event_id or '(no eventId)'}")
        click.echo(f"dry run: {len(chosen)} of {len(records)} dead letter(s) match")
        return
    with _broker() as connection, Progress("importing") as progress:
        progress.total(len(records))
        report = import_dead_letters(
            connection, records, filters, limit=limit, on_examined=progress.step
        )
    click.echo(f"imported {report.written} of {report.matched} dead letter(s)")
    if report.failed:
        raise click.ClickException(f"{report.failed} dead letter(s) were not confirmed")


@dlq.command()
@click.option("--once", is_flag=True, help="Stop once the queue is empty (a migration, a cron).")
def keep(once: bool) -> None:
    """Move dead letters from the queue into the store (CCSYNC_DLQ_STORE_URL), and delete those
    replayed or purged longer than CCSYNC_DLQ_RETENTION_DAYS ago. Runs until Ctrl-C."""
    settings = command_settings()
    with stop_requested() as stop, _store() as store, _broker() as connection:
        keeper = Keeper(connection, store, retention=timedelta(days=settings.dlq_retention_days))
        report = keeper.run(stop, until_empty=once)
    click.echo(f"stored {report.stored} new dead letter(s) of {report.received} taken")
