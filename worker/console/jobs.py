"""Background jobs: the console's long actions run in the server, not in the page.

An operator starts a replay, purge or export and may close the page: the job goes on in a
thread of the server, and its page (or ``/api/jobs/ID``) shows its progress when reopened. Jobs
are kept in memory, the newest ``MAX_JOBS`` of them; each ends with one audit line.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from worker.console.audit import audit
from worker.exceptions import CcsyncError

#: Jobs running at once; more wait their turn (the broker and the API are shared).
JOB_THREADS: Final = 2
#: Finished jobs remembered, the newest first; older ones (and their export files) are dropped.
MAX_JOBS: Final = 100

State = Literal["queued", "running", "done", "failed"]

_log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a job did: a sentence for people, counts for the audit line, and whether it failed."""

    message: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: bool = False


@dataclass
class Job:
    id: str
    kind: str
    selection: str
    operator: str
    address: str
    state: State = "queued"
    total: int | None = None
    examined: int = 0
    message: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    download: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    # Called from the job's thread; readers see whole ints, which is all progress needs.
    def on_total(self, count: int) -> None:
        self.total = count

    def on_examined(self, count: int) -> None:
        self.examined += count

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "selection": self.selection,
            "operator": self.operator,
            "state": self.state,
            "total": self.total,
            "examined": self.examined,
            "message": self.message,
            "counts": dict(self.counts),
            "createdAt": self.created_at,
            "finishedAt": self.finished_at,
            "download": self.download is not None and self.state == "done",
        }


Work = Callable[[Job], Outcome]


class JobRunner:
    def __init__(self, threads: int = JOB_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="console-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, *, kind: str, selection: str, operator: str, address: str, work: Work) -> Job:
        job = Job(
            id=secrets.token_hex(8),
            kind=kind,
            selection=selection,
            operator=operator,
            address=address,
        )
        with self._lock:
            self._jobs[job.id] = job
            self._jobs.move_to_end(job.id, last=False)
            while len(self._jobs) > MAX_JOBS:
                _, dropped = self._jobs.popitem()
                if dropped.download is not None:
                    dropped.download.unlink(missing_ok=True)
        self._executor.submit(self._run, job, work)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _run(job: Job, work: Work) -> None:
        job.state = "running"
        try:
            outcome = work(job)
        except CcsyncError as exc:
            outcome = Outcome(" ".join(str(exc).split()) or type(exc).__name__, failed=True)
        except Exception as exc:
            # A bug or the world outside (the broker gone): the job says so, the server lives on.
            _log.error("console job %s failed:\n%s", job.id, traceback.format_exc())
            outcome = Outcome(f"{type(exc).__name__}: {' '.join(str(exc).split())}", failed=True)
        job.message, job.counts = outcome.message, outcome.counts
        job.finished_at = time.time()
        job.state = "failed" if outcome.failed else "done"
        audit(
            operator=job.operator,
            address=job.address,
            action=job.kind,
            selection=job.selection,
            state=job.state,
            **job.counts,
        )
