"""Dead letters as the console shows them: rows of a list, and one in every detail.

Everything is read from the dead-letter store (``worker.dead_letter_queue.store``), never from
the queue; a dead letter changes state only by the actions (replay, purge), which use the CLI's
functions. A dead letter is named in URLs by its key, the first characters of its id in the store
(a digest of its body, properties and headers): free of anything the producer chose (an eventId
may be missing or hostile).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from worker.constants import (
    HEADER_FIRST_ATTEMPT_AT,
    HEADER_PREFIX,
    HEADER_REPLAYED_AT,
)
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.stats import error_type
from worker.dead_letter_queue.store import DeadLetterStore, StoredLetter

#: Hex digits of a dead letter's key: enough to tell apart any queue's worth of dead letters.
KEY_CHARS: Final = 20
#: Rows the list shows at most; the count above it says how many matched in all.
LIST_LIMIT: Final = 500

_HTTP_STATUS: Final = re.compile(r"HTTP \d{3}(;|$)")


def letter_key(letter: StoredLetter) -> str:
    return letter.id[:KEY_CHARS]


@dataclass(frozen=True)
class ApiErrorView:
    """``x-ccsync-error`` of an API answer (``HTTP 400; type; description; prop: errors``)."""

    status: str
    type: str | None
    description: str | None
    errors: list[tuple[str, str]]


def parse_api_error(error: str | None) -> ApiErrorView | None:
    """The parts of an API error text; None for a text that is not one (a validation error)."""
    if error is None or not _HTTP_STATUS.match(error):
        return None
    status, *rest = [part.strip() for part in error.split(";")]
    kind = rest.pop(0) if rest else None
    description: str | None = None
    errors: list[tuple[str, str]] = []
    for part in rest:
        name, sep, text = part.partition(": ")
        if sep and name and " " not in name:
            errors.append((name, text))
        elif description is None and not errors:
            description = part
        elif errors:
            # A description of a property error that itself held "; ".
            last_name, last_text = errors[-1]
            errors[-1] = (last_name, f"{last_text}; {part}")
    return ApiErrorView(status, kind or None, description, errors)


@dataclass(frozen=True)
class LetterRow:
    key: str
    summary: dict[str, Any]
    dead_lettered_at: datetime | None
    error_type: str | None

    @classmethod
    def of(cls, letter: StoredLetter) -> LetterRow:
        record = letter.record
        return cls(
            key=letter_key(letter),
            summary=record.summary(),
            dead_lettered_at=record.dead_lettered_at,
            error_type=error_type(record.error),
        )


@dataclass
class LetterList:
    rows: list[LetterRow] = field(default_factory=list)
    matched: int = 0
    page: int = 1
    size: int = LIST_LIMIT

    @property
    def first(self) -> int:
        return (self.page - 1) * self.size + 1

    @property
    def truncated(self) -> bool:
        return self.matched > len(self.rows)

    @property
    def more(self) -> bool:
        return self.page * self.size < self.matched


def read_list(
    store: DeadLetterStore, filters: DeadLetterFilter, *, limit: int = LIST_LIMIT, page: int = 1
) -> LetterList:
    """Page ``page`` (``limit`` rows) of the matching waiting dead letters, the oldest first, and
    how many match in all."""
    found = store.page(filters, number=page, size=limit)
    rows = [LetterRow.of(letter) for letter in found.letters]
    return LetterList(rows, found.total, page, limit)


def find(store: DeadLetterStore, key: str) -> StoredLetter | None:
    """The dead letter of ``key``, or None when the store has no such one."""
    return store.get(key) if len(key) == KEY_CHARS else None


@dataclass(frozen=True)
class LetterDetail:
    """Everything about one dead letter, as text a template prints (escaped)."""

    key: str
    summary: dict[str, Any]
    content_type: str | None
    content_encoding: str | None
    body_pretty: str | None
    body_raw: str
    body_is_utf8: bool
    producer_headers: list[tuple[str, str]]
    ccsync_headers: list[tuple[str, str]]
    api_error: ApiErrorView | None
    first_attempt_at: str | None
    replayed_at: str | None
    replay_count: int


def _header_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _headers(headers: Mapping[str, Any], keys: Iterable[str]) -> list[tuple[str, str]]:
    return [(key, _header_text(headers[key])) for key in sorted(keys)]


def detail(letter: StoredLetter) -> LetterDetail:
    record = letter.record
    try:
        body_text = record.body.decode("utf-8")
        is_utf8 = True
    except UnicodeDecodeError:
        body_text, is_utf8 = record.body.decode("utf-8", "backslashreplace"), False
    try:
        pretty: str | None = json.dumps(json.loads(body_text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        pretty = None
    headers = record.headers
    ours = [key for key in headers if str(key).startswith(HEADER_PREFIX)]
    theirs = [key for key in headers if not str(key).startswith(HEADER_PREFIX)]
    first = headers.get(HEADER_FIRST_ATTEMPT_AT)
    replayed = headers.get(HEADER_REPLAYED_AT)
    return LetterDetail(
        key=letter_key(letter),
        summary=record.summary(),
        content_type=record.content_type,
        content_encoding=record.content_encoding,
        body_pretty=pretty,
        body_raw=body_text,
        body_is_utf8=is_utf8,
        producer_headers=_headers(headers, theirs),
        ccsync_headers=_headers(headers, ours),
        api_error=parse_api_error(record.error),
        first_attempt_at=None if first is None else str(first),
        replayed_at=None if replayed is None else str(replayed),
        replay_count=record.replay_count,
    )
