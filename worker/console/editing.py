"""Edit and replay one event: the operator's changes, checked against the event model before
anything is published, and shown as a diff.

The edit itself is ``worker.dead_letter_queue.edit.edit_body``, as for
``ccsync dlq replay --set``; the check is ``worker.events.decode_event``, the intake's own, on the
edited message: an edit the intake would dead-letter again is refused here.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.constants import CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_HEADER_PREFIXES
from worker.dead_letter_queue.edit import EDITABLE_FIELDS, NULL_TEXT, edit_body
from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.events import decode_event
from worker.exceptions import InvalidEvent


def current_values(record: DeadLetterRecord) -> dict[str, str]:
    """The editable fields as the form shows them: ``null`` for JSON null, empty when absent."""
    try:
        document = json.loads(record.body)
    except (ValueError, RecursionError):
        return dict.fromkeys(EDITABLE_FIELDS, "")
    target = _edited_object(document, record)
    values = {}
    for name in EDITABLE_FIELDS:
        value = target.get(name, "") if isinstance(target, dict) else ""
        values[name] = NULL_TEXT if value is None else str(value)
    return values


def _edited_object(document: Any, record: DeadLetterRecord) -> Any:
    # Where edit_body writes: data of a structured CloudEvent, else the body's top level.
    media_type = (record.content_type or "").split(";", 1)[0].strip().lower()
    binary = any(str(key).startswith(CLOUDEVENTS_HEADER_PREFIXES) for key in record.headers)
    if media_type == CLOUDEVENTS_CONTENT_TYPE and not binary and isinstance(document, dict):
        return document.get("data")
    return document


def changed_fields(record: DeadLetterRecord, form: Mapping[str, str]) -> dict[str, str | None]:
    """The edits the form asks for: fields whose value differs from the current one.

    ``null`` stands for JSON null, as with ``--set``. Fields other than ``EDITABLE_FIELDS`` are
    ignored: the form has no others.
    """
    current = current_values(record)
    edits: dict[str, str | None] = {}
    for name in EDITABLE_FIELDS:
        if name not in form:
            continue
        value = form[name]
        if value != current[name]:
            edits[name] = None if value == NULL_TEXT else value
    return edits


@dataclass(frozen=True)
class EditPreview:
    """What an edit makes of the event: the new body, its diff, and why it is refused if so."""

    edits: dict[str, str | None]
    body: bytes
    diff: list[str]
    problem: str | None

    @property
    def acceptable(self) -> bool:
        return self.problem is None and bool(self.edits)


def _pretty(body: bytes) -> list[str]:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False).splitlines()
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace").splitlines()


def preview_edit(record: DeadLetterRecord, edits: Mapping[str, str | None]) -> EditPreview:
    """The edited event, validated by the intake's event model; nothing is published."""
    edits = dict(edits)
    if not edits:
        return EditPreview(edits, record.body, [], "nothing changed")
    try:
        body = edit_body(
            record.body,
            content_type=record.content_type,
            headers=record.original_headers,
            edits=edits,
        )
    except DeadLetterError as exc:
        return EditPreview(edits, record.body, [], str(exc))
    diff = list(
        difflib.unified_diff(
            _pretty(record.body), _pretty(body), "dead letter", "replay", n=2, lineterm=""
        )
    )
    try:
        decode_event(body, record.content_type, record.original_headers)
    except InvalidEvent as exc:
        return EditPreview(edits, body, diff, f"the edited event is not valid: {exc}")
    return EditPreview(edits, body, diff, None)
