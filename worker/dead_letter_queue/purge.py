"""Purge: delete the matching dead letters for good (the others stay untouched).

For what was examined and will never be replayed: the invalid event a producer has since fixed
and re-sent, a customer deleted on purpose. Export first (``ccsync dlq export --remove`` does both
in one step) when the record may be wanted later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kombu import Connection

from worker.dead_letter_queue.filters import DeadLetterFilter, Selection, select
from worker.dead_letter_queue.reading import hold


@dataclass
class PurgeReport:
    examined: int = 0
    matched: int = 0
    purged: int = 0
    dry_run: bool = False
    event_ids: list[str | None] = field(default_factory=list)


def purge(
    connection: Connection,
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    on_total: Callable[[int], None] | None = None,
    on_examined: Callable[[int], None] | None = None,
) -> PurgeReport:
    report = PurgeReport(dry_run=dry_run)
    selection = Selection()
    with hold(connection) as held:
        if on_total is not None:
            on_total(held.total)
        for record in select(
            held.records, filters, limit=limit, selection=selection, on_examined=on_examined
        ):
            report.event_ids.append(record.event_id)
            if not dry_run:
                held.remove(record)
                report.purged += 1
    report.examined, report.matched = selection.examined, selection.matched
    return report
