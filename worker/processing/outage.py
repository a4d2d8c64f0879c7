"""Outage protection: when CloudCockpit (or the ledger) fails systemically, stop and wait.

A run of ``threshold`` systemic failures in a row (5xx, no answer, a 401 that survives a token
renewal, Redis unreachable) opens the guard: the worker stops taking events, events already in
hand go back to the broker without spending an attempt, and a probe asks the API (and Redis) with
growing pauses whether it is back. The probe only reads, so a good answer does not close the guard:
it goes half-open, consumption resumes and exactly one event (the trial) is let through to make a
real write. Only when that write succeeds is the guard closed; if it fails systemically the guard
opens again (without spending the trial's attempt) and probing goes on with the pause it had.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutagePolicy:
    threshold: int = 5
    first_probe_seconds: float = 1.0
    max_probe_seconds: float = 30.0


class Admission(Enum):
    """What the guard lets a call do."""

    CALL = "call"  # closed: call as usual
    TRIAL = "trial"  # half-open: this call is the one write that decides whether the API is back
    HOLD = "hold"  # open, or half-open with the trial out: wait, without spending an attempt


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
        self._trial_out = False
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

    def admit(self) -> Admission:
        """Asked before each call: half-open, the first caller gets the trial, the others wait.

        A caller given ``TRIAL`` must report its outcome: ``record_success`` or
        ``record_failure`` once the API answered, else ``end_trial``.
        """
        with self._changed:
            if self._state is _State.CLOSED:
                return Admission.CALL
            if self._state is _State.HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return Admission.TRIAL
            return Admission.HOLD

    def end_trial(self) -> None:
        """The trial made no write (stale, duplicate, busy, rate limited): the next call is."""
        with self._changed:
            if self._state is _State.HALF_OPEN:
                self._trial_out = False

    def record_success(self) -> None:
        """A write was answered: the run of failures ends; half-open, the outage is over."""
        with self._changed:
            self._failures = 0
            if self._state is not _State.HALF_OPEN:
                return
            self._state = _State.CLOSED
            self._trial_out = False
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
                self._trial_out = False
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
            self._trial_out = False
            log.warning("outage: the probe got an answer; letting one write through to confirm")
            self._on_trial()
            while self._state is _State.HALF_OPEN and not self._stopped.is_set():
                self._changed.wait()
            # Closed, or closed and already open again (a new outage, with its own probe).
            return self._outage != outage or self._state is _State.CLOSED
