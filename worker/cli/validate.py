"""``ccsync validate FILE``: check events as the worker would read them, before producing them.

For integration teams: each event of the file (a JSON object, a list, or JSON lines; ``-`` for
standard input) is read as a message body would be (a native event, or a structured CloudEvent
when it has ``specversion``) and judged as the worker judges it. Nothing connects anywhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from worker.cli.event_files import read_event_argument
from worker.constants import CLOUDEVENTS_CONTENT_TYPE
from worker.events import decode_event, reject_if_ahead
from worker.exceptions import InvalidEvent
from worker.settings import DEFAULT_MAX_CLOCK_SKEW_SECONDS


def judge(document: dict[str, Any], *, now: datetime) -> str | None:
    """Why the worker would dead-letter ``document`` as invalid; None when it would not."""
    content_type = CLOUDEVENTS_CONTENT_TYPE if "specversion" in document else "application/json"
    try:
        event = decode_event(json.dumps(document).encode(), content_type, {})
        reject_if_ahead(event, now=now, max_skew_seconds=DEFAULT_MAX_CLOCK_SKEW_SECONDS)
    except InvalidEvent as exc:
        return str(exc)
    return None


@click.command()
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
def validate(file: Path, as_json: bool) -> None:
    """Check the events of FILE as the worker would; exit 1 if any is invalid."""
    documents = read_event_argument(file)
    now = datetime.now(UTC)
    invalid = 0
    for number, document in enumerate(documents, 1):
        reason = judge(document, now=now)
        invalid += reason is not None
        event_id = document.get("eventId", document.get("id"))
        if as_json:
            line = {"event": number, "eventId": event_id, "valid": reason is None}
            click.echo(json.dumps(line | ({"reason": reason} if reason else {})))
        else:
            verdict = "valid" if reason is None else f"INVALID: {reason}"
            click.echo(f"event {number} (eventId {event_id}): {verdict}")
    if invalid:
        raise click.ClickException(f"{invalid} of {len(documents)} event(s) invalid")
    if not as_json:
        click.echo(f"{len(documents)} event(s) valid")
