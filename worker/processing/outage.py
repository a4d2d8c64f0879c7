"""Outage protection: when CloudCockpit (or the ledger) fails systemically, stop and wait.

A run of ``threshold`` systemic failures in a row (5xx, no answer, a 401 that survives a token
renewal, Redis unreachable) opens the guard: the worker stops taking events, events already in
hand go back to the broker without spending an attempt, and a probe asks the API (and Redis) with
growing pauses whether it is back. The probe only reads, so a good answer does not close the guard:
it goes half-open, consumption resumes and exactly one event (the trial) is let through to make a
real write. Only when that write succeeds is the guard closed; if it fails systemically the guard
opens again (without spending the trial's attempt) and probing goes on with the pause it had.

The trial is a ``Trial`` its call carries. Whoever ends the call ends the trial, whatever became of
it (concluded, or dropped on a bug and its message requeued), so that the next call can be the
trial. A trial that still has no outcome after ``OutagePolicy.trial_timeout_seconds`` is given up
on: the next call is let through as a new trial, and the old one's end no longer counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker.cloudcockpit.client import longest_call_seconds
from worker.settings import HttpTimeouts

log = logging.getLogger(__name__)

#: What a trial's time-box adds to its call's lease: the wait for the relationship before the
#: call, and publishing the outcome after it.
TRIAL_MARGIN_SECONDS = 60.0


def trial_timeout_seconds(call_lease_seconds: float) -> float:
    """The ``OutagePolicy.trial_timeout_seconds`` of a worker whose calls last up to
    ``call_lease_seconds``: longer than an event takes from its admission to its conclusion."""
    return call_lease_seconds + TRIAL_MARGIN_SECONDS


#: Seconds a trial may go without an outcome before the guard lets another call be the trial,
#: under the default timeouts (the worker passes the one of its own).
TRIAL_TIMEOUT_SECONDS = trial_timeout_seconds(longest_call_seconds(HttpTimeouts()))


@dataclass(frozen=True)
class OutagePolicy:
    threshold: int = 5
    first_probe_seconds: float = 1.0
    max_probe_seconds: float = 30.0
    trial_timeout_seconds: float = TRIAL_TIMEOUT_SECONDS


class Admission(Enum):
    """What the guard lets a call do, unless it makes the call the trial (``Trial``)."""

    CALL = "call"  # closed: call as usual
    HOLD = "hold"  # open, or half-open with the trial out: wait, without spending an attempt


class Trial:
    """The one write a half-open guard let through, which decides whether the API is back.

    Its call reports the write's outcome to the guard (``record_success``/``record_failure``)
    and then ends the trial, or ends it without a write (stale, duplicate, busy, rate limited,
    dropped on a bug): the next call is the trial then. Ending it again does nothing, nor does
    ending a trial the guard gave up on.
    """

    __slots__ = ("_guard",)

    def __init__(self, guard: OutageGuard) -> None:
        self._guard: OutageGuard | None = guard

    def end(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard._trial_ended(self)


class _State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class OutageGuard:
    """Counts systemic failures, and holds calls from the first run of ``threshold`` of them
    until a real write succeeds again.

    Every transition and its callback happen under one lock, in order: a close can never be
    delivered after a later open. So the callbacks must be quick and must not call the guard:
    ``on_open`` stops consumption (at the opening, and again when a trial write failed),
    ``on_trial`` resumes it for the trial (the probe's read succeeded), ``on_close`` says that the
    outage is over (the trial write succeeded; consumption is already on).
    """

    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        on_open: Callable[[], None],
        on_trial: Callable[[], None],
        on_close: Callable[[], None],
        policy: OutagePolicy | None = None,
    ) -> None:
        self._probe = probe
        self._on_open = on_open
        self._on_trial = on_trial
        self._on_close = on_close
        self._policy = policy or OutagePolicy()
        self._changed = threading.Condition(threading.Lock())
        self._failures = 0
        self._state = _State.CLOSED
        self._trial: Trial | None = None
        self._trial_since = 0.0
        self._interval = self._policy.first_probe_seconds
        self._opened_at = 0.0
        # Numbers the outages, so that a probe thread still waking from one that is over ends.
        self._outage = 0
        self._stopped = threading.Event()

    @property
    def is_open(self) -> bool:
        """Whether calls are held (open, or half-open waiting for the trial's outcome)."""
        return self._state is not _State.CLOSED

    @property
    def retry_in(self) -> float:
        """How long an event in hand waits in the broker while the guard is open."""
        return max(self._interval, self._policy.first_probe_seconds)

    def admit(self) -> Admission | Trial:
        """Asked before each call: half-open, the first caller gets the trial, the others wait
        until it ends, or until it has gone ``trial_timeout_seconds`` without an outcome.

        A caller given a ``Trial`` must end it, whatever becomes of its call (``Trial.end``).
        """
        with self._changed:
            if self._state is _State.CLOSED:
                return Admission.CALL
            if self._state is not _State.HALF_OPEN:
                return Admission.HOLD
            now = time.monotonic()
            if self._trial is not None:
                if now - self._trial_since < self._policy.trial_timeout_seconds:
                    return Admission.HOLD
                log.warning(
                    "outage: the trial write has had no outcome for %.0fs; letting another through",
                    now - self._trial_since,
                )
            self._trial = Trial(self)
            self._trial_since = now
            return self._trial

    def _trial_ended(self, trial: Trial) -> None:
        with self._changed:
            if self._trial is trial:
                self._trial = None

    def record_success(self) -> None:
        """A write was answered: the run of failures ends; half-open, the outage is over."""
        with self._changed:
            self._failures = 0
            if self._state is not _State.HALF_OPEN:
                return
            self._state = _State.CLOSED
            self._trial = None
            lasted = time.monotonic() - self._opened_at
            log.warning("outage over after %.0fs: a write succeeded; consuming fully", lasted)
            self._on_close()
            self._changed.notify_all()

    def record_failure(self, error: str) -> None:
        """A systemic failure; afterwards ``is_open`` says whether the event is to wait it out."""
        with self._changed:
            if self._state is _State.HALF_OPEN:
                # The probe's read succeeded, but writes still fail: stay open, keep probing.
                self._state = _State.OPEN
                self._trial = None
                log.error("outage: a write still fails (%s); pausing consumption again", error)
                self._on_open()
                self._changed.notify_all()
                return
            self._failures += 1
            if self._state is _State.OPEN or self._failures < self._policy.threshold:
                return
            self._state = _State.OPEN
            self._opened_at = time.monotonic()
            self._interval = self._policy.first_probe_seconds
            self._outage += 1
            log.error(
                "outage: %d systemic failures in a row (last: %s); pausing consumption and probing",
                self._policy.threshold,
                error,
            )
            self._on_open()
            threading.Thread(
                target=self._probe_until_back,
                args=(self._outage,),
                name="ccsync-outage-probe",
                daemon=True,
            ).start()

    def stop(self) -> None:
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()

    def _probe_until_back(self, outage: int) -> None:
        """Runs for one outage: probes while open, waits while half-open, ends once closed."""
        while not self._stopped.wait(self._interval):
            if self._outage != outage:
                return
            try:
                healthy = self._probe()
            except Exception:
                log.exception("outage probe failed")
                healthy = False
            if healthy and self._try_a_write(outage):
                return
            self._interval = min(self._interval * 2, self._policy.max_probe_seconds)
            log.warning("outage: still down; next probe in %.0fs", self._interval)

    def _try_a_write(self, outage: int) -> bool:
        """Half-open until a trial write decides: True once this outage is over, False if the
        guard is open again."""
        with self._changed:
            if self._outage != outage or self._state is not _State.OPEN:
                return True
            self._state = _State.HALF_OPEN
            self._trial = None
            log.warning("outage: the probe got an answer; letting one write through to confirm")
            self._on_trial()
            while self._state is _State.HALF_OPEN and not self._stopped.is_set():
                self._changed.wait()
            # Closed, or closed and already open again (a new outage, with its own probe).
            return self._outage != outage or self._state is _State.CLOSED
