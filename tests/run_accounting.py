"""What the long runs (``tests.chaos``, ``tests.cluster``) share: the events they publish, and
the accounting of every eventId at the end: applied, skipped as stale or duplicate,
dead-lettered with a reason, or lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.events import native
from tests.integration.worker_logs import final_outcomes
from worker.testing import LocalWorker

#: Versions published per customer.
VERSIONS = 5


def history(events: int, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """``VERSIONS`` events a customer, oldest first, their identifiers ``<prefix>00042-V3``."""
    base = datetime(2026, 6, 1, tzinfo=UTC)
    customers = {}
    for c in range(max(1, events // VERSIONS)):
        customer = str(uuid.uuid4())
        customers[customer] = [
            native(customer, f"{prefix}{c:05d}-V{v}", occurred_at=base + timedelta(seconds=v))
            for v in range(VERSIONS)
        ]
    return customers


def skipped_events(workers: list[LocalWorker]) -> set[str]:
    """The eventIds the workers' logs end as stale or duplicate."""
    return {
        event_id
        for event_id, outcome in final_outcomes(*workers)
        if outcome in ("is stale", "is a duplicate")
    }


@dataclass
class RunCounts:
    """The counts every run reports; each run's report adds its own."""

    published: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    disruptions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(
        self, event_id: str, *, applied: bool, dead: Mapping[str, str], skipped: Collection[str]
    ) -> None:
        """One event: applied, else dead-lettered (``dead``: eventId to reason), else skipped,
        else lost."""
        if applied:
            self.applied += 1
        elif event_id in dead:
            reason = dead[event_id]
            self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1
        elif event_id in skipped:
            self.skipped += 1
        else:
            self.lost.append(event_id)

    def balance(self) -> str:
        dead = sum(self.dead_lettered.values())
        return (
            f"applied {self.applied} + skipped (stale or duplicate) {self.skipped} + "
            f"dead-lettered {dead} {self.dead_lettered}; lost {len(self.lost)}"
        )


def holds_newest(
    versions: list[dict[str, Any]], dead: Collection[str], value: object
) -> bool | None:
    """Whether ``value`` is the newest of ``versions`` not dead-lettered (None: all were)."""
    alive = [event for event in versions if event["eventId"] not in dead]
    return value == alive[-1]["internalIdentifier"] if alive else None
