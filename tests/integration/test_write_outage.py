"""Issue 15, item 7: an outage of writes only (reads still answer) is waited out, not probed by
resuming consumption and spending attempts each time a read succeeds."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import outcome_counts
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.timeout(240)

EVENTS = 10
#: Long enough for the probe (pauses 1, 2, 4, 8 s) to find the reads healthy several times.
WRITE_OUTAGE_SECONDS = 16
CONCURRENCY = 2
APPLIED = re.compile(r"event (\S+) applied attempt (\d+)")


def test_given_an_outage_of_writes_only_then_the_guard_holds_and_no_attempt_is_spent(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a worker with three retries (1, 2, 3 s), and CloudCockpit answering every PATCH with
    # 503 while every GET (the probe's read) still answers
    env = own_worker_env()
    events = [native() for _ in range(EVENTS)]
    with LocalWorker(env, concurrency=CONCURRENCY) as worker:
        sandbox.add_faults("*", {"status": 503, "times": 1_000_000})

        # When events arrive during that outage of writes
        for event in events:
            producer.publish(json.dumps(event).encode(), "application/json")
        wait_until(lambda: "pausing consumption" in worker.log, 30, "the guard to open")
        time.sleep(WRITE_OUTAGE_SECONDS)
        journal = sandbox.journal()
        reads = [e for e in journal if e["method"] == "GET"]
        first_read = min((e["seq"] for e in reads), default=0)
        writes_since = [e for e in journal if e["method"] == "PATCH" and e["seq"] > first_read]

        # and then the writes come back
        sandbox.clear_faults()
        wait_until(
            lambda: sum(outcome_counts(worker).values()) >= EVENTS,
            timeout=120,
            what="every event to reach an outcome",
        )
        log = worker.log

    # Then the guard opened once and stayed open while only reads answered: from the probe's
    # first read on, each good read let one write through, not a run of writes until it reopened
    assert len(reads) >= 2, "the probe read several times during the outage"
    assert log.count("systemic failures in a row") == 1
    assert 1 <= len(writes_since) <= len(reads)
    # and every event is applied once the writes are back, none with an attempt spent by the
    # probing: only failures before the guard opened count (at most one per event)
    counts = outcome_counts(worker)
    assert counts["applied"] == EVENTS, counts
    attempts = {event_id: int(n) for event_id, n in APPLIED.findall(log)}
    assert set(attempts) == {event["eventId"] for event in events}
    assert max(attempts.values()) <= 2, attempts
    final = {c["id"]: c["relationships"].get("self") for c in sandbox.state()}
    assert all(final.get(e["customerId"]) == e["internalIdentifier"] for e in events)
