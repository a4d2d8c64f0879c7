"""Editing a dead-lettered event before replaying it: ``replay --event-id ID --set key=value``.

For the event the API rejected because of what it said (a bad internal identifier, the wrong
tenant or reseller). Only the fields an operator may need to correct can be set; everything else
in the body stays as the producer wrote it. Where the field lives depends on the encoding:
top level for native events, inside ``data`` for structured CloudEvents, and the body itself
is ``data`` for binary CloudEvents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from worker.constants import CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_HEADER_PREFIXES
from worker.dead_letter_queue.errors import DeadLetterError

EDITABLE_FIELDS: Final = ("internalIdentifier", "tenant", "resellerId")
NULL_TEXT: Final = "null"


def parse_assignments(texts: Iterable[str]) -> dict[str, str | None]:
    """``key=value`` pairs; the value ``null`` stands for JSON null (clears the field)."""
    edits: dict[str, str | None] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep:
            raise DeadLetterError(f"--set {text!r}: expected FIELD=VALUE")
        if key not in EDITABLE_FIELDS:
            raise DeadLetterError(f"--set {text!r}: only {', '.join(EDITABLE_FIELDS)} can be set")
        edits[key] = None if value == NULL_TEXT else value
    return edits


def edit_body(
    body: bytes,
    *,
    content_type: str | None,
    headers: Mapping[str, Any],
    edits: Mapping[str, str | None],
) -> bytes:
    """The body with ``edits`` applied where this encoding keeps the event's fields."""
    if not edits:
        return body
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DeadLetterError("cannot edit: the body is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise DeadLetterError("cannot edit: the body is not a JSON object")
    target = document
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    binary = any(str(key).startswith(CLOUDEVENTS_HEADER_PREFIXES) for key in headers)
    if media_type == CLOUDEVENTS_CONTENT_TYPE and not binary:
        data = document.get("data")
        if not isinstance(data, dict):
            raise DeadLetterError("cannot edit: the CloudEvent has no data object")
        target = data
    target.update(edits)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
