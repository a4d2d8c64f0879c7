"""How ``ccsync dlq`` shows things to people: tables and a progress bar (stderr)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.dead_letter_queue.stats import StatsGroup
from worker.dead_letter_queue.store import HistoryEntry, StoredLetter

#: Below this many dead letters a pass takes well under a second: no progress bar.
PROGRESS_THRESHOLD = 500
#: Characters of an error a table shows; a longer one ends in "...".
ERROR_COLUMN = 60


def table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [columns, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _moment(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


DEAD_LETTER_COLUMNS = ["DEAD-LETTERED AT", "REASON", "STATUS", "TRIES", "EVENT ID", "ERROR"]


def dead_letter_row(record: DeadLetterRecord) -> list[str]:
    summary = record.summary()
    error = str(summary["error"] or "")
    return [
        _moment(record.dead_lettered_at),
        str(summary["reason"] or "-"),
        str(summary["status"] or "-"),
        str(summary["attempts"] if summary["attempts"] is not None else "-"),
        str(summary["eventId"] or "-"),
        error if len(error) <= ERROR_COLUMN else error[: ERROR_COLUMN - 3] + "...",
    ]


#: Characters of a stored dead letter's id a table shows (``dlq show`` takes them).
ID_COLUMN = 12

STORED_COLUMNS = ["ID", "STATE", *DEAD_LETTER_COLUMNS]


def stored_row(letter: StoredLetter) -> list[str]:
    return [letter.id[:ID_COLUMN], letter.state, *dead_letter_row(letter.record)]


def describe(
    letter: StoredLetter, lettered: list[StoredLetter], entries: list[HistoryEntry]
) -> dict[str, Any]:
    """``dlq show``: the dead letter's summary, headers and body, and its history in time
    order: each dead-lettering of its event (reason, last answer), each replay and purge."""
    events = [
        (
            row.record.dead_lettered_at or row.stored_at,
            f"dead-lettered ({row.id[:ID_COLUMN]}): {row.record.reason}, {row.record.error or '-'}",
        )
        for row in lettered
    ] + [
        (
            entry.at,
            f"{entry.action} ({entry.letter_id[:ID_COLUMN]}) by {entry.who or '-'}"
            f" in job {entry.job or '-'}: {entry.outcome}",
        )
        for entry in entries
    ]
    return {
        **letter.summary(),
        "contentType": letter.record.content_type,
        "headers": dict(letter.record.headers),
        "body": letter.record.body.decode("utf-8", "backslashreplace"),
        "history": [
            f"{_moment(moment)}  {text}" for moment, text in sorted(events, key=lambda e: e[0])
        ],
    }


STATS_COLUMNS = ["COUNT", "REASON", "STATUS", "ERROR TYPE", "OLDEST", "NEWEST"]


def stats_row(group: StatsGroup) -> list[str]:
    return [
        str(group.count),
        group.reason or "-",
        "-" if group.status is None else str(group.status),
        group.error_type or "-",
        _moment(group.oldest),
        _moment(group.newest),
    ]


class Progress:
    """A progress bar on stderr, made once the pass knows how many dead letters it will examine."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None

    def total(self, count: int) -> None:
        if count >= PROGRESS_THRESHOLD:
            self._bar = click.progressbar(length=count, label=self._label, file=sys.stderr)
            self._bar.__enter__()

    def step(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.render_finish()
