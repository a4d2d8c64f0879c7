"""``ccsync events show``: where is my event? (contract section 6)

The logic is ``worker.ops.whereabouts``; this module only reads options and prints.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import click

from worker.amqp.connection import broker_connection, connect_within
from worker.cli.settings import command_settings
from worker.cli.types import CUSTOMER_ID, TIMESTAMP
from worker.ops.whereabouts import RelationshipState, Report, where_is
from worker.processing.ledger import Ledger


@click.group()
def events() -> None:
    """What became of events: read from the ledger, the dead letters and the queues."""


@events.command()
@click.argument("event_id", required=False)
@click.option("--customer", "customer_id", type=CUSTOMER_ID, help="The event's customerId.")
@click.option(
    "--occurred-at",
    type=TIMESTAMP,
    help="The event's occurredAt: tells an event skipped as stale (needs the customer).",
)
@click.option("--json", "as_json", is_flag=True, help="The answer as one JSON object.")
def show(
    event_id: str | None,
    customer_id: uuid.UUID | None,
    occurred_at: datetime | None,
    as_json: bool,
) -> None:
    """Where is EVENT_ID, or what became of the events of --customer: applied (when, which
    value), stale, waiting, dead-lettered (why) or unknown. Reads only; changes nothing."""
    if event_id is None and customer_id is None:
        raise click.UsageError("give an EVENT_ID, --customer, or both")
    settings = command_settings()
    ledger = Ledger.from_url(settings.redis_url)
    with broker_connection(settings) as connection:
        connect_within(connection, settings.broker_connect_timeout)
        report = where_is(
            ledger=ledger,
            connection=connection,
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
        )
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
        return
    for line in _lines(report):
        click.echo(line)


def _lines(report: Report) -> list[str]:
    if report.status is not None:
        head = [f"event {report.event_id}: {report.status.value}", f"  {report.detail}"]
    else:
        head = [f"customer {report.customer_id}: {report.detail}"]
    lines = head + [line for state in report.relationships for line in _relationship(state)]
    for letter in report.dead_letters:
        status = "" if letter.status is None else f" (status {letter.status})"
        lines.append(f"dead letter {letter.event_id}: {letter.reason}{status}: {letter.error}")
    queued = report.queued
    lines.append(
        f"queued in the broker (all customers): {queued.events or 0} new, "
        f"{(queued.tasks or 0) + queued.delayed} retries"
    )
    return lines


def _relationship(state: RelationshipState) -> list[str]:
    relationship = state.relationship
    lines = [
        f"relationship {relationship.tenant} {relationship.customer_id} "
        f"{relationship.reseller_id or 'self'}"
    ]
    applied = state.applied
    if applied is not None:
        value = json.dumps(applied.value, ensure_ascii=False) if applied.value_known else "?"
        occurred = applied.occurred_at
        lines.append(
            f"  newest applied: {applied.event_id} occurredAt "
            f"{occurred.isoformat() if occurred else '?'} value {value}"
        )
    lock = state.lock
    if lock is not None:
        holder = (
            "an event being applied"
            if lock.lingering_for is None
            else f"lingering for {lock.lingering_for}"
        )
        lines.append(f"  held: {holder}, {lock.remaining_seconds:.1f}s left")
    return lines
