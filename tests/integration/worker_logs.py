"""Reading final outcomes from worker logs: each event's last word is one of these lines."""

from __future__ import annotations

import re
from collections import Counter

from worker.testing import LocalWorker

FINAL = re.compile(r"event (\S+) (applied|is stale|is a duplicate|dead-lettered)")


def final_outcomes(*workers: LocalWorker) -> list[tuple[str, str]]:
    """(eventId, outcome) for every message that reached an end, across the given workers."""
    found: list[tuple[str, str]] = []
    for worker in workers:
        found.extend((m.group(1), m.group(2)) for m in FINAL.finditer(worker.log))
    return found


def outcome_counts(*workers: LocalWorker) -> Counter[str]:
    return Counter(outcome for _, outcome in final_outcomes(*workers))
