"""Outage protection: open after a run of systemic failures, probe with growing pauses, close."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import httpx
import pytest

from tests.unit.test_apply import FakeApi, RecordingForwarder, attempt, client_for
from worker.cloudcockpit.client import longest_call_seconds
from worker.cloudcockpit.connection import AsyncConnection
from worker.observability.endpoints import Liveness
from worker.processing.applier import Applier, Outcome
from worker.processing.backoff import RetryPolicy
from worker.processing.ledger import Ledger
from worker.processing.outage import (
    Admission,
    OutageGuard,
    OutagePolicy,
    Trial,
    trial_timeout_seconds,
)
from worker.runtime.pipeline import Pipeline
from worker.runtime.settler import InFlightMessages, Settler
from worker.settings import HttpTimeouts

pytestmark = pytest.mark.timeout(30)

PROBE_THREAD = "ccsync-outage-probe"
# Long enough that no probe runs during a test that does not wait for one.
NEVER = OutagePolicy(threshold=3, first_probe_seconds=600.0, max_probe_seconds=600.0)


def probe_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == PROBE_THREAD]


@dataclass
class Recorder:
    """The guard's callbacks: counts opens and closes, and answers probes from a script."""

    answers: list[bool | Exception] = field(default_factory=list)
    default: bool = False
    opened: int = 0
    trials: int = 0
    closed: int = 0
    # Each callback as it finishes: which one took effect last.
    order: list[str] = field(default_factory=list)
    slow_close: float = 0.0
    probes: list[float] = field(default_factory=list)
    retry_in_at_probe: list[float] = field(default_factory=list)
    guard: OutageGuard | None = None
    closed_event: threading.Event = field(default_factory=threading.Event)
    trial_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_open(self) -> None:
        with self.lock:
            self.opened += 1
            self.order.append("open")

    def on_trial(self) -> None:
        with self.lock:
            self.trials += 1
            self.order.append("trial")
        self.trial_event.set()

    def on_close(self) -> None:
        time.sleep(self.slow_close)
        with self.lock:
            self.closed += 1
            self.order.append("close")
        self.closed_event.set()

    def probe(self) -> bool:
        self.probes.append(time.monotonic())
        if self.guard is not None:
            self.retry_in_at_probe.append(self.guard.retry_in)
        answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def make_guard() -> Iterator[Callable[..., tuple[OutageGuard, Recorder]]]:
    """Guards stopped afterwards, and their probe threads gone before the next test."""
    guards: list[OutageGuard] = []

    def make(
        policy: OutagePolicy = NEVER, recorder: Recorder | None = None
    ) -> tuple[OutageGuard, Recorder]:
        recorder = recorder or Recorder()
        guard = OutageGuard(
            recorder.probe,
            on_open=recorder.on_open,
            on_trial=recorder.on_trial,
            on_close=recorder.on_close,
            policy=policy,
        )
        recorder.guard = guard
        guards.append(guard)
        return guard, recorder

    yield make
    for guard in guards:
        guard.stop()
    deadline = time.monotonic() + 5
    while probe_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe_threads() == [], "a probe thread outlived its stopped guard"


def fail(guard: OutageGuard, times: int) -> None:
    for n in range(times):
        guard.record_failure(f"HTTP 503 #{n}")


def write_succeeds(guard: OutageGuard, recorder: Recorder) -> None:
    """Once the probe let the guard go half-open: the trial call is made and succeeds."""
    assert recorder.trial_event.wait(10)
    recorder.trial_event.clear()
    assert isinstance(guard.admit(), Trial)
    guard.record_success()
    assert recorder.closed_event.wait(10)


# --- opening ---------------------------------------------------------------------------------


def test_given_failures_below_the_threshold_then_the_guard_stays_closed(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    guard, recorder = make_guard()

    fail(guard, 2)

    assert not guard.is_open
    assert recorder.opened == 0
    assert probe_threads() == []


def test_given_a_success_between_failures_then_the_count_starts_again(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    guard, recorder = make_guard()

    fail(guard, 2)
    guard.record_success()
    fail(guard, 2)

    assert not guard.is_open
    assert recorder.opened == 0
    # and the third failure in a row after the success opens it
    fail(guard, 1)
    assert guard.is_open
    assert recorder.opened == 1


def test_given_exactly_threshold_failures_then_the_guard_opens_and_calls_on_open(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    guard, recorder = make_guard()

    fail(guard, 3)

    assert guard.is_open
    assert recorder.opened == 1
    assert recorder.closed == 0
    assert len(probe_threads()) == 1


def test_given_threshold_one_then_the_first_failure_opens(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    guard, recorder = make_guard(OutagePolicy(threshold=1, first_probe_seconds=600.0))

    fail(guard, 1)

    assert guard.is_open
    assert recorder.opened == 1


def test_given_many_more_failures_from_many_threads_then_on_open_is_called_once(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    guard, recorder = make_guard()
    start = threading.Barrier(16)

    def hammer() -> None:
        start.wait(10)
        fail(guard, 50)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()

    assert guard.is_open
    assert recorder.opened == 1
    assert len(probe_threads()) == 1
    assert recorder.closed == 0


# --- probing and closing ---------------------------------------------------------------------


def test_given_an_open_guard_then_the_probe_repeats_with_doubling_pauses_capped_at_max(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    # Given a probe answering "still down" five times, then "back"
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.02, max_probe_seconds=0.08)
    guard, recorder = make_guard(policy, Recorder(answers=[*[False] * 5, True]))
    # When the guard opens
    opened_at = time.monotonic()
    fail(guard, 1)
    # Then it is probed until the probe says the API is back, and a write confirms it
    write_succeeds(guard, recorder)
    assert len(recorder.probes) == 6
    # with the pause before each probe doubling from the first, capped at the maximum
    expected = [0.02, 0.04, 0.08, 0.08, 0.08, 0.08]
    assert recorder.retry_in_at_probe == pytest.approx(expected)
    pauses = [b - a for a, b in zip([opened_at, *recorder.probes], recorder.probes, strict=False)]
    for pause, wanted in zip(pauses, expected, strict=True):
        assert pause >= wanted - 0.005
    # and not doubling beyond the cap (uncapped they would be 0.16, 0.32, 0.64 s)
    assert sum(pauses[3:]) < 1.12
    assert not guard.is_open
    assert recorder.closed == 1


def test_given_the_probe_answers_true_then_one_trial_write_goes_through_and_closes_the_guard(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    policy = OutagePolicy(threshold=2, first_probe_seconds=0.01, max_probe_seconds=0.05)
    guard, recorder = make_guard(policy, Recorder(answers=[True]))

    fail(guard, 2)

    # Then a good probe (a read) does not close the guard: it resumes consumption for one write
    assert recorder.trial_event.wait(10)
    assert guard.is_open
    assert (recorder.opened, recorder.trials, recorder.closed) == (1, 1, 0)
    assert isinstance(guard.admit(), Trial)
    assert guard.admit() is Admission.HOLD
    # and only that write succeeding closes it
    guard.record_success()
    assert recorder.closed_event.wait(10)
    assert not guard.is_open
    assert guard.admit() is Admission.CALL
    assert recorder.order == ["open", "trial", "close"]
    assert len(recorder.probes) == 1
    # and the failures counted before the outage are forgotten: one more does not reopen it
    fail(guard, 1)
    assert not guard.is_open


def test_given_the_trial_write_fails_then_the_guard_stays_open_and_probes_on(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]], caplog: pytest.LogCaptureFixture
) -> None:
    # Given reads that answer while writes fail
    policy = OutagePolicy(threshold=2, first_probe_seconds=0.01, max_probe_seconds=0.05)
    guard, recorder = make_guard(policy, Recorder(default=True))
    caplog.set_level(logging.ERROR, logger="worker.processing.outage")
    fail(guard, 2)
    assert recorder.trial_event.wait(10)
    recorder.trial_event.clear()

    # When the trial write fails systemically
    assert isinstance(guard.admit(), Trial)
    guard.record_failure("HTTP 503 on the trial")

    # Then the guard is open again at once (the trial waits it out: no attempt spent), no call
    # passes, and the outage is the same one: probing goes on with a doubled pause
    assert guard.is_open
    assert guard.admit() is Admission.HOLD
    assert recorder.order == ["open", "trial", "open"]
    assert recorder.trial_event.wait(10)
    assert recorder.retry_in_at_probe[:2] == pytest.approx([0.01, 0.02])
    assert sum("systemic failures in a row" in r.getMessage() for r in caplog.records) == 1
    # and a trial that made no write passes the trial on to the next call
    trial = guard.admit()
    assert isinstance(trial, Trial)
    trial.end()
    assert isinstance(guard.admit(), Trial)
    guard.record_success()
    assert recorder.closed_event.wait(10)
    assert recorder.order == ["open", "trial", "open", "trial", "close"]


def test_given_a_failure_while_the_guard_closes_then_its_open_takes_effect_after_the_close(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    # Given a half-open guard whose close callback takes a while (resuming consumption)
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.01, max_probe_seconds=0.05)
    guard, recorder = make_guard(policy, Recorder(answers=[True], slow_close=0.3))
    fail(guard, 1)
    assert recorder.trial_event.wait(10)
    assert isinstance(guard.admit(), Trial)

    # When the trial succeeds, and another call fails systemically while the close is delivered
    closing = threading.Thread(target=guard.record_success)
    closing.start()
    time.sleep(0.1)
    fail(guard, 1)
    closing.join(10)

    # Then the callbacks took effect in the order of the transitions: the open comes last, as
    # the guard's state says
    assert recorder.order == ["open", "trial", "close", "open"]
    assert guard.is_open


def test_given_the_probe_answers_false_then_the_guard_stays_open(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.01, max_probe_seconds=0.02)
    guard, recorder = make_guard(policy, Recorder(default=False))

    fail(guard, 1)
    deadline = time.monotonic() + 10
    while len(recorder.probes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert len(recorder.probes) >= 4
    assert guard.is_open
    assert recorder.closed == 0


def test_given_a_probe_that_raises_then_it_counts_as_unhealthy(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a probe that raises once, then answers "back"
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.01, max_probe_seconds=1.0)
    guard, recorder = make_guard(policy, Recorder(answers=[RuntimeError("probe broke"), True]))
    caplog.set_level(logging.ERROR, logger="worker.processing.outage")
    # When the guard opens
    fail(guard, 1)
    # Then the raise did not close it: only the next probe did, after a doubled pause
    write_succeeds(guard, recorder)
    assert len(recorder.probes) == 2
    assert recorder.retry_in_at_probe == pytest.approx([0.01, 0.02])
    assert recorder.closed == 1
    # and the probe thread survived the exception and logged it
    assert any(record.exc_info for record in caplog.records)


def test_given_a_stopped_guard_then_it_no_longer_probes(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.05, max_probe_seconds=0.05)
    guard, recorder = make_guard(policy, Recorder(default=True))

    guard.stop()
    fail(guard, 1)
    time.sleep(0.3)

    assert recorder.probes == []
    assert recorder.closed == 0


# --- retry_in and reopening ------------------------------------------------------------------


def test_retry_in_is_at_least_the_first_probe_pause_closed_open_and_after_growth(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    policy = OutagePolicy(threshold=1, first_probe_seconds=0.05, max_probe_seconds=0.4)
    guard, recorder = make_guard(policy, Recorder(answers=[False, False, True]))

    assert guard.retry_in >= 0.05
    fail(guard, 1)
    assert guard.retry_in >= 0.05
    write_succeeds(guard, recorder)

    assert all(value >= 0.05 for value in recorder.retry_in_at_probe)
    assert recorder.retry_in_at_probe == pytest.approx([0.05, 0.1, 0.2])
    assert guard.retry_in >= 0.05


def test_given_a_closed_guard_then_it_can_open_and_close_again(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
) -> None:
    policy = OutagePolicy(threshold=2, first_probe_seconds=0.01, max_probe_seconds=0.04)
    guard, recorder = make_guard(policy, Recorder(answers=[False, False, True]))
    fail(guard, 2)
    write_succeeds(guard, recorder)
    assert not guard.is_open
    recorder.closed_event.clear()

    # When the API goes down again
    recorder.answers = [True]
    fail(guard, 1)
    assert not guard.is_open
    fail(guard, 1)

    # Then the guard opens again, probes from the first pause again, and closes again
    write_succeeds(guard, recorder)
    assert recorder.opened == 2
    assert recorder.closed == 2
    assert recorder.retry_in_at_probe == pytest.approx([0.01, 0.02, 0.04, 0.01])
    assert not guard.is_open


# --- the trial ends on every way out -----------------------------------------------------------

HALF_OPEN_SOON = OutagePolicy(threshold=1, first_probe_seconds=0.01, max_probe_seconds=0.05)


def half_open(make_guard: Callable[..., tuple[OutageGuard, Recorder]]) -> OutageGuard:
    """A guard opened by one failure whose probe found the API back: its trial is to be had."""
    guard, recorder = make_guard(HALF_OPEN_SOON, Recorder(answers=[True]))
    fail(guard, 1)
    assert recorder.trial_event.wait(10)
    return guard


def test_given_a_trial_without_an_outcome_then_after_the_time_box_another_call_is_the_trial(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a half-open guard whose trial may go 0.2 s without an outcome
    policy = OutagePolicy(
        threshold=1, first_probe_seconds=0.01, max_probe_seconds=0.05, trial_timeout_seconds=0.2
    )
    guard, recorder = make_guard(policy, Recorder(answers=[True]))
    fail(guard, 1)
    assert recorder.trial_event.wait(10)
    caplog.set_level(logging.WARNING, logger="worker.processing.outage")
    lost = guard.admit()
    assert isinstance(lost, Trial)

    # When its call never reports (a path that drops it without ending it)
    assert guard.admit() is Admission.HOLD
    time.sleep(0.25)

    # Then the next call is the trial, and says why
    again = guard.admit()
    assert isinstance(again, Trial)
    assert guard.admit() is Admission.HOLD
    assert any("no outcome for" in record.getMessage() for record in caplog.records)
    # and the lost trial ending late does not let a third one out beside the new one
    lost.end()
    assert guard.admit() is Admission.HOLD
    # while the new one ending (once is enough; again changes nothing) does
    again.end()
    again.end()
    assert isinstance(guard.admit(), Trial)


def test_the_worker_gives_a_trial_longer_than_its_calls_last() -> None:
    lease = longest_call_seconds(HttpTimeouts())
    assert OutagePolicy().trial_timeout_seconds == trial_timeout_seconds(lease) > lease
    assert trial_timeout_seconds(900.0) > 900.0


def applier_over(
    ledger: Ledger, guard: OutageGuard, respond: Callable[[httpx.Request], httpx.Response]
) -> tuple[Applier, FakeApi]:
    api = FakeApi(respond)
    applier = Applier(
        api=client_for(api),
        ledger=ledger,
        forwarder=RecordingForwarder(),
        policy=RetryPolicy((1.0, 2.0, 3.0), jitter=0.0),
        guard=guard,
    )
    return applier, api


def undecodable(request: httpx.Request) -> httpx.Response:
    """An answer whose body is not what its Content-Encoding says: httpx cannot read it."""
    return httpx.Response(
        204, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )


def test_given_the_trial_gets_an_undecodable_answer_then_it_fails_as_no_usable_answer(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
    make_ledger: Callable[..., Ledger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a half-open guard, and an API whose answer httpx cannot decode
    guard = half_open(make_guard)
    applier, api = applier_over(make_ledger(), guard, undecodable)
    caplog.set_level(logging.ERROR, logger="worker.processing.outage")

    # When the trial is made
    outcome = applier.apply(attempt(2))

    # Then it is a failure of the API like a 5xx: the guard opens again and the event waits
    # out the outage, its attempt unspent; the guard is not left waiting for the trial
    assert len(api.requests) == 1
    assert outcome is Outcome.DEFERRED
    assert guard.is_open
    assert any("no usable answer" in record.getMessage() for record in caplog.records)
    assert isinstance(applier.forwarder, RecordingForwarder)
    ((deferred, _),) = applier.forwarder.retries
    assert deferred.number == 2


def test_given_a_retry_whose_send_raises_then_its_trial_ends_and_the_next_call_is_the_trial(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
    make_ledger: Callable[..., Ledger],
) -> None:
    # Given a half-open guard, and a bug that raises while the trial is sent
    guard = half_open(make_guard)

    def bug(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug while sending")

    applier, _ = applier_over(make_ledger(), guard, bug)

    # When a retry takes the trial and its settling re-raises
    with pytest.raises(RuntimeError, match="a bug while sending"):
        applier.apply(attempt(2))

    # Then the trial is over: the next call is the trial, not held forever
    assert isinstance(guard.admit(), Trial)


def test_given_a_call_dropped_without_an_outcome_then_abandoning_it_ends_its_trial(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
    make_ledger: Callable[..., Ledger],
) -> None:
    # Given the trial's call, prepared by the intake
    guard = half_open(make_guard)
    applier, _ = applier_over(make_ledger(), guard, lambda request: httpx.Response(204))
    call = applier.prepare(attempt(1))
    assert call.trial is not None
    assert guard.admit() is Admission.HOLD

    # When a stage drops it on a bug (its message requeued) and abandons it, twice even
    call.abandon()
    call.abandon()

    # Then the next call is the trial, and only it
    assert isinstance(guard.admit(), Trial)
    assert guard.admit() is Admission.HOLD


class BrokenConnection:
    """A lane's connection with a bug: every request raises what no answer handling expects."""

    longest_request_seconds = 1.0

    async def patch(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("a bug while sending")


def pipeline_losing(
    applier: Applier, make_connection: Callable[[], AsyncConnection]
) -> tuple[Pipeline, threading.Event]:
    """A pipeline over ``applier``; the event is set once a message was settled (requeued)."""
    settled = threading.Event()
    pipeline = Pipeline(
        applier=applier,
        lanes=1,
        make_connection=make_connection,
        on_settled=settled.set,
        liveness=Liveness(),
        stall_seconds=60,
        on_fault=lambda stage, error: pytest.fail(f"the {stage} stage died: {error!r}"),
    )
    return pipeline, settled


def a_bug(*args: object, **kwargs: object) -> NoReturn:
    raise RuntimeError("a bug in the ledger's code")


@pytest.mark.parametrize("stage", ["gate", "caller"])
def test_given_a_stage_failing_on_the_trial_then_the_pipeline_abandons_it(
    stage: str,
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
    make_ledger: Callable[..., Ledger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pipeline whose gate (taking the relationship) or lane (sending) meets a bug
    guard = half_open(make_guard)
    ledger = make_ledger()
    applier, _ = applier_over(ledger, guard, lambda request: httpx.Response(204))
    if stage == "gate":
        monkeypatch.setattr(ledger, "try_acquire_all", a_bug)
    pipeline, settled = pipeline_losing(applier, BrokenConnection)  # type: ignore[arg-type]
    call = applier.prepare(attempt(1))
    assert call.trial is not None

    # When the trial's call is lost there
    pipeline.put(call, "the trial's message")  # type: ignore[arg-type]
    assert settled.wait(10)

    # Then its message goes back, and the next call is the trial
    assert pipeline.wait_idle(0)
    assert isinstance(guard.admit(), Trial)


def test_given_the_settler_failing_to_leave_the_trial_then_it_abandons_it(
    make_guard: Callable[..., tuple[OutageGuard, Recorder]],
    make_ledger: Callable[..., Ledger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the trial's call made, and a settler that fails (a bug) leaving its relationship
    guard = half_open(make_guard)
    ledger = make_ledger()
    applier, _ = applier_over(ledger, guard, lambda request: httpx.Response(204))
    call = applier.call(attempt(1))
    assert call.trial is not None
    monkeypatch.setattr(ledger, "leave_all", a_bug)
    in_flight = InFlightMessages()
    in_flight.started()
    settled = threading.Event()
    settler = Settler(applier=applier, in_flight=in_flight, on_settled=settled.set)
    threading.Thread(target=settler.run, args=(lambda: None,), daemon=True).start()

    # When the settler takes it
    settler.put(call, "the trial's message")
    assert settled.wait(10)

    # Then its message goes back to the queue, and the next call is the trial
    assert in_flight.wait_idle(0)
    assert isinstance(guard.admit(), Trial)
