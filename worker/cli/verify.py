"""``ccsync verify``: read what ccsync applied back from CloudCockpit, compare, repair drift.

The logic is ``worker.ops.verify``; this module only reads options, prints and asks.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from worker.cli.settings import command_settings
from worker.cli.types import CUSTOMER_ID, RATE, TIMESTAMP
from worker.cloudcockpit.client import (
    CloudCockpitClient,
    longest_call_seconds,
    make_http_client,
    make_token_source,
)
from worker.observability.endpoints import serve_endpoints
from worker.ops.verify import (
    Check,
    Filters,
    Pace,
    Repair,
    RepairOutcome,
    Status,
    Tally,
    Verifier,
)
from worker.processing.budget import RateBudget
from worker.processing.ledger import Ledger
from worker.processing.pause import virtual_host

#: Widths of the table's status and UUID columns.
STATUS_WIDTH = 9
UUID_WIDTH = 36


@click.command()
@click.option("--tenant", help="Only this tenant's relationships (any case).")
@click.option("--customer", "customer_id", type=CUSTOMER_ID, help="Only this customer's.")
@click.option(
    "--since",
    type=TIMESTAMP,
    help="Only relationships ccsync applied at or after this moment (UTC unless an offset).",
)
@click.option(
    "--rate",
    type=RATE,
    help="At most this many calls to CloudCockpit per second [default: one call at a time].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per relationship checked.")
@click.option("--repair", is_flag=True, help="Write the newest value back where it drifted.")
@click.option("--yes", is_flag=True, help="Repair without asking.")
def verify(
    tenant: str | None,
    customer_id: uuid.UUID | None,
    since: datetime | None,
    rate: float | None,
    as_json: bool,
    repair: bool,
    yes: bool,
) -> None:
    """Read each relationship ccsync applied back from CloudCockpit and compare; exit 1 on drift."""
    settings = command_settings()
    settings.require_api_credentials()
    filters = Filters(tenant=tenant, customer_id=customer_id, since=since)
    if settings.metrics_port is not None:
        serve_endpoints(settings.metrics_port, host=settings.metrics_host)
    http = make_http_client(settings)
    verifier = Verifier(
        ledger=Ledger.from_url(settings.redis_url, lock_ttl_seconds=settings.lock_ttl_seconds),
        api=CloudCockpitClient(
            http, base_url=settings.base_url, tokens=make_token_source(settings, http)
        ),
        pace=Pace(rate),
        budget=RateBudget.from_url(
            settings.redis_url,
            per_second=settings.api_rate_limit,
            deployment=virtual_host(settings.broker_url),
        ),
        unanswered_hold_seconds=settings.unanswered_hold_seconds,
        call_lease_seconds=longest_call_seconds(settings.timeouts),
    )
    with http:
        tally, drifted = _check_all(verifier, filters, as_json=as_json)
        unrepaired = tally.statuses[Status.DRIFT] + tally.statuses[Status.ERROR]
        if repair and drifted and _confirmed(len(drifted), yes=yes):
            for check in drifted:
                done = verifier.repair(check)
                tally.repairs[done.outcome] += 1
                _emit_repair(done, as_json=as_json)
            unrepaired -= tally.repairs[RepairOutcome.REPAIRED]
    click.echo(tally.summary(), err=as_json)
    if unrepaired:
        raise click.exceptions.Exit(1)


def _check_all(verifier: Verifier, filters: Filters, *, as_json: bool) -> tuple[Tally, list[Check]]:
    tally = Tally()
    drifted: list[Check] = []
    if not as_json:
        click.echo(_row("STATUS", "CUSTOMER", "RESELLER", "TENANT", "EXPECTED", "ACTUAL"))
    with _progress(verifier, filters) as advance:
        for check in verifier.checks(filters):
            advance()
            tally.statuses[check.status] += 1
            if check.status is Status.DRIFT:
                drifted.append(check)
            if as_json:
                click.echo(json.dumps(check.to_json(), ensure_ascii=False))
            elif check.status is not Status.IN_SYNC:
                click.echo(_table_row(check))
    return tally, drifted


@contextmanager
def _progress(verifier: Verifier, filters: Filters) -> Iterator[Any]:
    """A progress bar on standard error, only when it is a terminal; counting the relationships
    first costs one more scan of the ledger (no call to CloudCockpit)."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    with click.progressbar(
        length=verifier.count(filters), label="verifying", file=sys.stderr
    ) as bar:
        yield lambda: bar.update(1)


def _confirmed(count: int, *, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.UsageError(f"{count} relationship(s) drifted: repair them with --repair --yes")
    return click.confirm(f"Write the newest value back to {count} relationship(s)?", err=True)


def _emit_repair(done: Repair, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(done.to_json(), ensure_ascii=False))
        return
    relationship = done.check.relationship
    click.echo(
        f"{done.outcome.value}: {relationship.customer_id} "
        f"{relationship.reseller_id or 'self'} {relationship.tenant}: {done.detail}"
    )


def _table_row(check: Check) -> str:
    relationship = check.relationship
    return _row(
        check.status.value,
        relationship.customer_id,
        relationship.reseller_id or "self",
        relationship.tenant,
        "?" if check.status is Status.UNKNOWN else _value(check.expected),
        _value(check.actual) if check.detail is None else check.detail,
    )


def _row(*cells: str) -> str:
    status, customer, reseller, tenant, expected, actual = cells
    return (
        f"{status:<{STATUS_WIDTH}} {customer:<{UUID_WIDTH}} {reseller:<{UUID_WIDTH}} "
        f"{tenant}  {expected}  {actual}"
    )


def _value(value: str | None) -> str:
    """A value as JSON, so that null, an empty string and spaces can be told apart."""
    return json.dumps(value, ensure_ascii=False)
