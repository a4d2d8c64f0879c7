"""The pipeline's supervision: a stage that dies stops the worker, a stage that stalls says so.

Over the real Redis; the API is an httpx stand-in (``FakeApi``) and messages are stand-ins
that record how they were settled.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support import REDIS_URL
from tests.unit.redis_ledgers import fresh_ledger
from tests.unit.test_apply import BASE_URL, FakeApi, RecordingForwarder, status
from tests.unit.test_stages import StandInMessage, event_attempt, make_applier
from worker.cloudcockpit.client import make_async_connection
from worker.cloudcockpit.connection import AsyncConnection
from worker.observability.endpoints import Liveness
from worker.processing.attempts import Attempt
from worker.processing.ledger import Ledger
from worker.runtime.caller import LaneEnded
from worker.runtime.pipeline import EXIT_STAGE_DIED, Pipeline
from worker.settings import Settings

WAIT_SECONDS = 10.0
#: A stall threshold well above a beat (1 s), so that only the stuck stage passes it.
STALL_SECONDS = 3.0


class Bug(BaseException):
    """Escapes every ``except Exception`` of a stage, as a bug in its own loop would."""


@dataclass
class Faults:
    told: queue.SimpleQueue[tuple[str, BaseException | None]]

    def __call__(self, stage: str, error: BaseException | None) -> None:
        self.told.put((stage, error))

    def next(self) -> tuple[str, BaseException | None]:
        return self.told.get(timeout=WAIT_SECONDS)


def answering_500() -> AsyncConnection:
    settings = Settings(CLOUDCOCKPIT_BASE_URL=BASE_URL, CLOUDCOCKPIT_TOKEN="static-tok")
    return make_async_connection(settings, transport=httpx.MockTransport(FakeApi(status(500))))


def pipeline_over(
    ledger: Ledger,
    *,
    forwarder: RecordingForwarder | None = None,
    stall_seconds: float = 60.0,
    make_connection: Callable[[], AsyncConnection] = answering_500,
) -> tuple[Pipeline, Liveness, Faults]:
    applier, recording = make_applier(ledger)
    applier.forwarder = forwarder or recording
    liveness = Liveness()
    faults = Faults(queue.SimpleQueue())
    pipeline = Pipeline(
        applier=applier,
        lanes=2,
        make_connection=make_connection,
        on_settled=lambda: None,
        liveness=liveness,
        stall_seconds=stall_seconds,
        on_fault=faults,
    )
    return pipeline, liveness, faults


class LedgerWithABug(Ledger):
    def try_acquire_all(self, *args: object, **kwargs: object) -> list[object]:
        raise Bug("the gate's bug")


def test_given_a_gate_that_dies_then_the_pipeline_reports_the_fault() -> None:
    # Given a pipeline whose gate meets an error that escapes its handling
    ledger = LedgerWithABug.from_url(REDIS_URL, prefix=f"ccsync-test-{uuid.uuid4().hex}")
    pipeline, _, faults = pipeline_over(ledger)
    applier, _ = make_applier(ledger)

    # When an event is put in
    pipeline.put(applier.prepare(event_attempt()), StandInMessage("one"))

    # Then the supervisor is told that the gate died, and why
    stage, error = faults.next()
    assert stage == "gate"
    assert isinstance(error, Bug)


def test_given_a_lane_that_ends_then_the_caller_stage_is_reported_dead() -> None:
    # Given a pipeline whose lanes meet a bug that escapes their handling of a call
    def broken_connection() -> AsyncConnection:
        raise Bug("the lane's bug")

    ledger = fresh_ledger()
    pipeline, _, faults = pipeline_over(ledger, make_connection=broken_connection)
    applier, _ = make_applier(ledger)

    # When an event reaches a lane
    pipeline.put(applier.prepare(event_attempt()), StandInMessage("one"))

    # Then the supervisor is told that the caller died, and why
    stage, error = faults.next()
    assert stage == "caller"
    assert isinstance(error, LaneEnded)
    assert isinstance(error.__cause__, Bug)


@dataclass
class BlockedForwarder(RecordingForwarder):
    """A broker that confirms nothing until ``released`` is set, as in a memory alarm."""

    released: threading.Event = field(default_factory=threading.Event)

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None:
        self.released.wait(3 * WAIT_SECONDS)
        super().retry_later(attempt, delay_seconds)


def test_given_a_settler_stuck_on_the_broker_then_livez_fails_and_recovers_by_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a settler whose outcomes the broker does not confirm
    forwarder = BlockedForwarder()
    pipeline, liveness, faults = pipeline_over(
        fresh_ledger(), forwarder=forwarder, stall_seconds=STALL_SECONDS
    )
    applier, _ = make_applier(fresh_ledger())
    caplog.set_level(logging.WARNING, logger="worker.runtime.pipeline")

    # When a call fails and its retry cannot be published for longer than the stall threshold
    message = StandInMessage("stuck")
    pipeline.put(applier.prepare(event_attempt()), message)
    stalled = wait_for(lambda: "settler stage last beat" in liveness.check().text)

    # Then /livez fails naming the settler, and the supervisor says so in the log
    assert stalled
    assert not liveness.check().ok
    assert wait_for(
        lambda: any("stalled: settler stage" in record.message for record in caplog.records)
    )

    # When the broker confirms again
    forwarder.released.set()

    # Then the settler goes on by itself: the message is settled and /livez passes again
    assert pipeline.wait_idle(WAIT_SECONDS)
    assert wait_for(lambda: liveness.check().ok)
    assert wait_for(lambda: any("settler stage moves again" in r.message for r in caplog.records))
    assert faults.told.empty()


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_exit_worker_ends_the_process_at_once_with_its_own_status() -> None:
    # Given a process whose stage died, with a thread that would keep it alive
    script = (
        "import threading, logging\n"
        "logging.basicConfig()\n"
        "from worker.runtime.pipeline import exit_worker\n"
        "threading.Thread(target=threading.Event().wait).start()\n"
        "exit_worker('settler', RuntimeError('a bug'))\n"
    )

    # When the supervisor is told
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )

    # Then it exits with the stage's status, saying which stage and why
    assert done.returncode == EXIT_STAGE_DIED
    assert "the settler stage died (RuntimeError('a bug'))" in done.stderr
