"""The console's actions as job work: each one call of ``worker.dead_letter_queue``, as the CLI
makes it, so the console keeps the CLI's guarantees (a dead letter is marked replayed only once
its publish is confirmed, and claimed first, so two operators never replay it twice). The job's
id and operator go into each dead letter's history.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from worker.console.broker import connected
from worker.console.config import ConsoleConfig
from worker.console.jobs import Job, Outcome, Work
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.replay import ReplayReport
from worker.dead_letter_queue.store import DeadLetterStore
from worker.dead_letter_queue.stored_replay import purge_stored, replay_stored
from worker.dead_letter_queue.transfer import export_stored
from worker.observability.redaction import Redaction


def _replay(
    config: ConsoleConfig,
    store: DeadLetterStore,
    job: Job,
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    edits: Mapping[str, str | None] | None = None,
) -> tuple[ReplayReport, dict[str, int]]:
    """One replay from the store reporting its progress to ``job``: its report, and the job's
    counts."""
    job.on_total(min(store.page(filters, size=0).total, limit or sys.maxsize))
    with connected(config) as connection:
        report = replay_stored(
            store,
            connection,
            filters,
            who=job.operator,
            job=job.id,
            limit=limit,
            edits=edits,
            on_examined=job.on_examined,
        )
    counts = {"matched": report.matched, "replayed": report.replayed, "failed": report.failed}
    return report, counts


def replay_work(
    config: ConsoleConfig, store: DeadLetterStore, filters: DeadLetterFilter, limit: int | None
) -> Work:
    def work(job: Job) -> Outcome:
        report, counts = _replay(config, store, job, filters, limit=limit)
        message = (
            f"replayed {report.replayed} of {report.matched} matching dead letter(s) "
            f"in {report.seconds:.1f}s"
        )
        if report.failed:
            message += f"; {report.failed} publish(es) not confirmed wait in the store"
        return Outcome(message, counts, failed=bool(report.failed))

    return work


def edit_replay_work(
    config: ConsoleConfig, store: DeadLetterStore, event_id: str, edits: Mapping[str, str | None]
) -> Work:
    """Replays the dead letters of one eventId with ``edits`` applied, as ``--set`` does."""
    filters = DeadLetterFilter.build(event_ids=[event_id])

    def work(job: Job) -> Outcome:
        report, counts = _replay(config, store, job, filters, edits=dict(edits))
        if not report.matched:
            return Outcome(f"no dead letter with eventId {event_id} is left", counts, failed=True)
        fields = ", ".join(sorted(edits))
        message = f"edited {fields} and replayed {report.replayed} of {report.matched}"
        return Outcome(message, counts, failed=bool(report.failed))

    return work


def purge_work(store: DeadLetterStore, filters: DeadLetterFilter, limit: int | None) -> Work:
    def work(job: Job) -> Outcome:
        report = purge_stored(store, filters, who=job.operator, limit=limit)
        job.on_total(report.matched)
        job.on_examined(report.matched)
        counts = {"matched": report.matched, "purged": report.purged}
        return Outcome(f"purged {report.purged} dead letter(s)", counts)

    return work


def export_work(
    config: ConsoleConfig,
    store: DeadLetterStore,
    filters: DeadLetterFilter,
    limit: int | None,
    path: Path,
) -> Work:
    """Writes the matching dead letters to ``path`` (a new file), changing none."""

    def work(job: Job) -> Outcome:
        with path.open("x", encoding="utf-8") as out:
            report = export_stored(
                store,
                filters,
                out,
                redaction=Redaction.from_settings(config.settings),
                who=job.operator,
                limit=limit,
            )
        job.on_total(report.matched)
        job.on_examined(report.matched)
        job.download = path
        counts = {"matched": report.matched, "exported": report.written}
        return Outcome(f"exported {report.written} dead letter(s)", counts)

    return work
