"""The triage view of the dead-letter queue: how many, why, since when.

Dead letters are grouped by reason, HTTP status and the API's error type, so that "404 NotFound
from one bad customer list" and "503 during last night's outage" stand apart at a glance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.dead_letter_queue.reading import DeadLetterRecord

_HTTP_ERROR = re.compile(r"HTTP \d{3}(;|$)")


def error_type(error: str | None) -> str | None:
    """The API error type: the second part of ``HTTP 404; NotFound; ...``, else None."""
    if error is None or not _HTTP_ERROR.match(error):
        return None
    parts = error.split(";")
    return (parts[1].strip() or None) if len(parts) > 1 else None


@dataclass(frozen=True)
class StatsGroup:
    reason: str | None
    status: int | None
    error_type: str | None
    count: int
    oldest: datetime | None
    newest: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "status": self.status,
            "errorType": self.error_type,
            "count": self.count,
            "oldest": None if self.oldest is None else self.oldest.isoformat(),
            "newest": None if self.newest is None else self.newest.isoformat(),
        }


GroupKey = tuple[str | None, int | None, str | None]


def group_stats(records: Iterable[DeadLetterRecord]) -> list[StatsGroup]:
    """Groups, the largest first (ties: the one waiting longest first)."""
    counts: dict[GroupKey, int] = {}
    oldest: dict[GroupKey, datetime] = {}
    newest: dict[GroupKey, datetime] = {}
    for record in records:
        key = (record.reason, record.status, error_type(record.error))
        counts[key] = counts.get(key, 0) + 1
        moment = record.dead_lettered_at
        if moment is not None:
            if key not in oldest or moment < oldest[key]:
                oldest[key] = moment
            if key not in newest or moment > newest[key]:
                newest[key] = moment
    return sorted_groups(
        StatsGroup(*key, count=count, oldest=oldest.get(key), newest=newest.get(key))
        for key, count in counts.items()
    )


def sorted_groups(groups: Iterable[StatsGroup]) -> list[StatsGroup]:
    """The largest first (ties: the one waiting longest first)."""
    return sorted(
        groups,
        key=lambda group: (
            -group.count,
            group.oldest is None,
            group.oldest.timestamp() if group.oldest is not None else 0.0,
            str(group.reason),
            group.status or 0,
            str(group.error_type),
        ),
    )
