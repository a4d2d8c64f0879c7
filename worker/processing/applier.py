"""The outcome of one attempt: consult the ledger, call CloudCockpit, then applied, stale,
duplicate, retry later, wait out an outage, or dead letter.

In three steps, so that the worker can spread them over threads: ``prepare`` and ``send`` (with
the relationship taken in between), leaving the relationship, then ``conclude``. ``apply`` does
all of it in one thread, as retries do.

Free of Celery so that every branch can be tested by calling ``Applier.apply`` directly.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import sentry_sdk

from worker.cloudcockpit.client import Change, CloudCockpitClient, longest_call_seconds
from worker.constants import (
    DELIVERY_LIMIT,
    REASON_API_REJECTED,
    REASON_DELIVERY_LIMIT,
    REASON_RETRIES_EXHAUSTED,
)
from worker.exceptions import (
    ApiRejected,
    ApiUnavailable,
    LeaseExpired,
    LedgerUnavailable,
    RateLimited,
    RelationshipBusy,
    TokenRejected,
    TokenUnavailable,
    TransientFailure,
)
from worker.observability import metrics, tracing
from worker.processing.attempts import Attempt, Call
from worker.processing.backoff import RetryPolicy
from worker.processing.budget import RateBudget
from worker.processing.dead_letters import DeadLetter, Envelope
from worker.processing.ledger import Hold, Ledger, Relationship, Verdict
from worker.processing.outage import Admission, OutageGuard, Trial
from worker.settings import HttpTimeouts

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from worker.cloudcockpit.connection import AsyncConnection

log = logging.getLogger(__name__)

#: The name of each attempt's span.
ATTEMPT_SPAN = "ccsync attempt"
#: Outcomes whose attempt span is marked an error: the event was not applied by this attempt.
_FAILED_OUTCOMES: frozenset[str] = frozenset({"retrying", "dead-lettered"})

#: Fences one hold right before its call, for that many seconds (``Ledger.fence``'s contract).
Fence = Callable[[Hold, float], Awaitable[None]]
#: Waits for a call's slot in its tenant's rate budget (``RateBudget.wait``'s contract).
BudgetWait = Callable[[str], Awaitable[None]]


class Outcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"
    RETRYING = "retrying"
    DEFERRED = "deferred"
    DEAD_LETTERED = "dead-lettered"


# The log line of each outcome starts "event <eventId> <verb>"; tests and operators grep for it.
_VERB = {
    Outcome.APPLIED: "applied",
    Outcome.STALE: "is stale:",
    Outcome.DUPLICATE: "is a duplicate:",
    Outcome.RETRYING: "failed:",
    Outcome.DEFERRED: "deferred:",
    Outcome.DEAD_LETTERED: "dead-lettered",
}


def _no_counter() -> None:
    pass


_COUNTERS = {
    Outcome.APPLIED: metrics.EVENTS_APPLIED.inc,
    Outcome.STALE: metrics.EVENTS_STALE.inc,
    Outcome.DUPLICATE: metrics.EVENTS_DUPLICATE.inc,
}


def retry_reason(failure: TransientFailure) -> str:
    """The ``reason`` label of ``ccsync_events_retried_total``: what failed, in a few words."""
    if isinstance(failure, RateLimited):
        return "rate-limited"
    if isinstance(failure, TokenRejected | TokenUnavailable):
        return "token"
    if isinstance(failure, LedgerUnavailable):
        return "ledger-unavailable"
    if failure.status is None:
        return "api-no-answer"
    return "api-error"


class Forwarder(Protocol):
    """Forwards an attempt to its next try or to the dead letters; both calls return only once
    the broker has the message."""

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None: ...

    def dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None: ...


#: Failures that say the API or the ledger as a whole is down, not that this event is bad.
SYSTEMIC_FAILURES = (ApiUnavailable, TokenRejected, TokenUnavailable, LedgerUnavailable)
#: Seconds before an event whose relationship stayed busy comes back (no attempt spent).
BUSY_RETRY_SECONDS = 1.0
#: How long CloudCockpit might still apply a call that got no answer proving it was not applied
#: (``CCSYNC_UNANSWERED_HOLD_SECONDS``): newer events of the relationship wait this long, so that
#: a late write cannot land after them.
UNSETTLED_LINGER_SECONDS = 30.0
#: How long a relationship is kept for one call, from right before it: its longest duration
#: under the default timeouts (the worker passes the one of its settings).
CALL_LEASE_SECONDS = longest_call_seconds(HttpTimeouts())


@dataclass(frozen=True)
class ProbeTarget:
    """The relationship of the last event that failed systemically: what the outage probe reads."""

    tenant: str
    customer_id: uuid.UUID
    reseller_id: uuid.UUID | None


class Applier:
    """Applies one attempt of one event and decides what becomes of it."""

    def __init__(
        self,
        *,
        api: CloudCockpitClient,
        ledger: Ledger,
        forwarder: Forwarder,
        policy: RetryPolicy,
        guard: OutageGuard | None = None,
        rng: random.Random | None = None,
        unsettled_linger_seconds: float = UNSETTLED_LINGER_SECONDS,
        call_lease_seconds: float = CALL_LEASE_SECONDS,
        budget: RateBudget | None = None,
    ) -> None:
        """``budget``: the API's rate budget each call waits for, before its fence (None: calls
        never wait, and a 429 holds nothing but its own event)."""
        self.api = api
        self.budget = budget
        self.ledger = ledger
        self.forwarder = forwarder
        self.policy = policy
        self.guard = guard
        self.rng = rng or random.Random()
        self.probe_target: ProbeTarget | None = None
        self.unsettled_linger_seconds = unsettled_linger_seconds
        self.call_lease_seconds = call_lease_seconds

    def apply(
        self, attempt: Attempt, delivery_count: int = 0, *, consumed: Context | None = None
    ) -> Outcome:
        """The whole attempt in this thread: ``call``, leave the relationship, ``conclude``.

        Raises only on a bug, with the call abandoned (``Call.abandon``)."""
        call = self.call(attempt, delivery_count, consumed=consumed)
        with _abandoned_on_error(call):
            self.leave_all([call])
        return self.conclude(call)

    def call(
        self, attempt: Attempt, delivery_count: int = 0, *, consumed: Context | None = None
    ) -> Call:
        """Takes the relationship (waiting for it if another event holds it) and, if the event
        is new, calls CloudCockpit. Publishes and logs nothing: see ``conclude``. Raises only on
        a bug, with the call abandoned (``Call.abandon``)."""
        call = self.prepare(attempt, delivery_count, consumed=consumed)
        with _abandoned_on_error(call):
            if call.needs_relationship:
                try:
                    call.hold = self.ledger.acquire(
                        call.relationship, attempt.event.event_id, attempt.inherited_lock
                    )
                except (RelationshipBusy, LedgerUnavailable) as exc:
                    call.failure = exc
            self.send(call)
        return call

    def prepare(
        self, attempt: Attempt, delivery_count: int = 0, *, consumed: Context | None = None
    ) -> Call:
        """The call, before its relationship is taken; taken already if no call is to be made.

        Its trace continues ``consumed`` (the span of the message's intake), or else the
        producer's context as the envelope carries it, on every attempt alike: the span of the
        attempt, ended by ``conclude``, and the ``traceparent`` of its PATCH.
        """
        call = Call(attempt, Relationship.of(attempt.event), delivery_count)
        envelope = attempt.envelope
        parent = consumed or tracing.producer_context(
            envelope.headers, envelope.body, envelope.content_type
        )
        if parent is not None or tracing.recording():
            event = attempt.event
            call.trace = tracing.start_attempt(
                parent,
                name=ATTEMPT_SPAN,
                attributes={
                    "eventId": event.event_id,
                    "correlationId": str(attempt.correlation_id),
                    "tenant": attempt.tenant,
                    "customerId": str(event.customer_id),
                    "attempt": attempt.number,
                },
            )
        if delivery_count < DELIVERY_LIMIT and self.guard is not None:
            admission = self.guard.admit()
            call.outage = admission is Admission.HOLD
            if isinstance(admission, Trial):
                call.trial = admission
        return call

    def send(self, call: Call) -> None:
        """With the relationship held: the verdict and, for a new event, the call to CloudCockpit.

        The relationship stays held until ``leave_all``, which the worker does for many calls at
        once, off the threads that wait on CloudCockpit.
        """
        with self._settling(call):
            hold = self._hold_to_call(call)
            if hold is None:
                return
            if self.budget is not None:
                # Before the fence: waiting for the budget eats nothing of the call's lease.
                self.budget.wait(call.attempt.tenant)
            # The lock was taken ahead, and may have expired while the event waited for this
            # thread: another event could hold it now. Checked and extended in one script, and
            # the verdict judged again by what was applied meanwhile.
            leased_at = time.monotonic()
            self.ledger.fence(hold, lease_seconds=self.call_lease_seconds)
            if self._still_new(call):
                started = time.monotonic()
                with tracing.calling(call.trace):
                    self.api.set_internal_identifier(
                        _change(call), lease_ends=leased_at + self.call_lease_seconds
                    )
                self._called(call, started)

    async def send_async(
        self, call: Call, *, connection: AsyncConnection, fence: Fence, budget: BudgetWait
    ) -> None:
        """``send`` in an event loop: the call through ``connection``, ``budget`` in place of
        ``RateBudget.wait`` and ``fence`` (the ledger's ``fence_all`` for every call the loop is
        about to make, in one round trip) in place of ``Ledger.fence``, right before it. Same
        verdicts, same failures, same lease."""
        with self._settling(call):
            hold = self._hold_to_call(call)
            if hold is None:
                return
            await budget(call.attempt.tenant)
            # Taken before the fence: the lease it sets ends no sooner than this plus its length.
            leased_at = time.monotonic()
            await fence(hold, self.call_lease_seconds)
            if self._still_new(call):
                started = time.monotonic()
                with tracing.calling(call.trace):
                    await self.api.set_internal_identifier_async(
                        connection, _change(call), lease_ends=leased_at + self.call_lease_seconds
                    )
                self._called(call, started)

    @contextlib.contextmanager
    def _settling(self, call: Call) -> Iterator[None]:
        """Around ``send`` and ``send_async``: a rejection, a transient failure or a busy
        relationship is the call's outcome (``_call_failed``); anything else (a bug, or the
        event loop cancelling the call) leaves the relationship unlocked, abandons the call
        (``Call.abandon``: its trial ends) and goes on, so that the message is redelivered."""
        try:
            yield
        except (ApiRejected, TransientFailure, RelationshipBusy) as exc:
            self._call_failed(call, exc)
        except BaseException:
            try:
                self.leave_all([call])
            finally:
                call.abandon()
            raise

    def _hold_to_call(self, call: Call) -> Hold | None:
        """Before the fence: the hold to fence when the held event is new and may be sent now;
        None when no call is to be made (nothing held, or ``call`` says why not)."""
        hold = call.hold
        if hold is None:
            return None
        call.verdict = hold.verdict(call.attempt.event)
        if call.verdict is not Verdict.NEW:
            return None
        if not self.ledger.reachable:
            # Taken before Redis went away: a call now could not be recorded, and would
            # only have to be made again.
            call.failure = LedgerUnavailable("ledger unavailable: the call was not made")
            return None
        if call.trial is None and self.guard is not None and self.guard.is_open:
            # Admitted before the guard opened: it waits out the outage like the others.
            call.outage = True
            return None
        return hold

    def _still_new(self, call: Call) -> bool:
        """After the fence: the verdict again, by what the ledger holds now; ``RateLimited``
        if a 429 came for the tenant meanwhile (``RateBudget.check_unpaused``)."""
        assert call.hold is not None
        call.verdict = call.hold.verdict(call.attempt.event)
        if call.verdict is Verdict.NEW and self.budget is not None:
            self.budget.check_unpaused(call.attempt.tenant)
        return call.verdict is Verdict.NEW

    def _called(self, call: Call, started: float) -> None:
        assert call.hold is not None
        call.duration = time.monotonic() - started
        call.hold.applied(call.attempt.event)
        if self.budget is not None:
            self.budget.answered(call.attempt.tenant)

    def _call_failed(
        self, call: Call, exc: ApiRejected | TransientFailure | RelationshipBusy
    ) -> None:
        if isinstance(exc, ApiUnavailable) and exc.unsettled and call.hold is not None:
            # A late write of this event must not land after a newer one.
            call.hold.linger(self.unsettled_linger_seconds)
        if isinstance(exc, RateLimited) and exc.status is not None and self.budget is not None:
            # The tenant's next calls from this worker wait at once; the fleet is told later,
            # by ``conclude``, off the threads that make calls.
            self.budget.seen_refusal(call.attempt.tenant, exc.retry_after)
        call.failure = exc

    def leave_all(self, calls: Sequence[Call]) -> None:
        """Releases what the calls hold (recording what they applied) in one round trip. If
        Redis cannot record it, each of them fails as the ledger being unavailable."""
        held = [(call, call.hold) for call in calls if call.hold is not None]
        try:
            kept = self.ledger.leave_all([hold for _, hold in held])
        except LedgerUnavailable as exc:
            for call, hold in held:
                call.failure = exc
                # The lock may outlive the outage by a whole lease: the retry takes it over.
                call.attempt = call.attempt.inheriting(hold.token)
            kept = [True] * len(held)
        for (call, hold), own in zip(held, kept, strict=True):
            call.hold = None
            if not own and hold.record is not None:
                # Applied, but the lock expired before it was recorded: another event may have
                # been sent since, unaware of it. Sent again (same X-Correlation-Id), it lands
                # last if it is the newest, and is judged stale if it is not.
                call.failure = RelationshipBusy(
                    f"relationship {call.relationship.name} was lost before the call was "
                    "recorded: sent again"
                )

    def conclude(self, call: Call) -> Outcome:
        """What becomes of the event after its call: counted, logged, retried or dead-lettered.

        The trial of a half-open guard reports to it: its write answered closes the guard, a
        systemic failure opens it again (the event waits, its attempt unspent), anything else
        (no write made) passes the trial to the next call. Ends the attempt's span with the
        outcome.
        """
        outcome: Outcome | None = None
        try:
            with tracing.calling(call.trace):
                outcome = self._conclude(call)
            return outcome
        finally:
            if call.trial is not None:
                call.trial.end()
                call.trial = None
            if call.trace is not None:
                tracing.end_attempt(
                    call.trace,
                    "no-outcome" if outcome is None else outcome.value,
                    failed=outcome is None or outcome in _FAILED_OUTCOMES,
                )

    def _conclude(self, call: Call) -> Outcome:
        attempt = call.attempt
        failure = call.failure
        if call.delivery_count >= DELIVERY_LIMIT:
            return self._dead_letter(
                attempt,
                reason=REASON_DELIVERY_LIMIT,
                error=f"delivered {call.delivery_count} times without an outcome: "
                "the worker crashed or hung on it",
                status=None,
            )
        if call.outage and self.guard is not None:
            return self._defer(attempt, self.guard.retry_in, "outage protection is on")
        if isinstance(failure, RelationshipBusy | LeaseExpired):
            # Nothing was sent: the event comes back soon, its attempt unspent.
            return self._defer(attempt, BUSY_RETRY_SECONDS, str(failure))
        if isinstance(failure, RateLimited):
            return self._rate_limited(attempt, failure)
        if isinstance(failure, ApiRejected):
            self._healthy()
            return self._dead_letter(
                attempt, reason=REASON_API_REJECTED, error=failure.error, status=failure.status
            )
        if isinstance(failure, TransientFailure):
            return self._failed(attempt, failure)
        if call.verdict is Verdict.STALE:
            return self._report(attempt, Outcome.STALE, "a newer one was applied")
        if call.verdict is Verdict.DUPLICATE:
            return self._report(attempt, Outcome.DUPLICATE, "already applied")
        assert call.duration is not None
        self._healthy()
        metrics.PUBLISH_TO_APPLY_SECONDS.observe(attempt.age_seconds())
        return self._report(
            attempt,
            Outcome.APPLIED,
            f"attempt {attempt.number}",
            duration=round(call.duration, 4),
        )

    def _failed(self, attempt: Attempt, failure: TransientFailure) -> Outcome:
        if self.guard is not None and isinstance(failure, SYSTEMIC_FAILURES):
            event = attempt.event
            self.probe_target = ProbeTarget(attempt.tenant, event.customer_id, event.reseller_id)
            self.guard.record_failure(failure.error)
            if self.guard.is_open:
                # The API is down for everyone: waiting out the outage costs no attempt.
                return self._defer(attempt, self.guard.retry_in, failure.error)
        delay = self.policy.delay_after(attempt.number, failure, self.rng)
        if delay is None:
            return self._dead_letter(
                attempt, reason=REASON_RETRIES_EXHAUSTED, error=failure.error, status=failure.status
            )
        self.forwarder.retry_later(attempt.next(), delay)
        metrics.EVENTS_RETRIED.labels(retry_reason(failure)).inc()
        return self._report(attempt, Outcome.RETRYING, f"{failure.error}; retry in {delay:.1f}s")

    def _rate_limited(self, attempt: Attempt, failure: RateLimited) -> Outcome:
        """A 429, or a rate budget spent for longer than a call may wait: the API refused
        nothing of the event itself, so the attempt is not spent; the event comes back after
        ``Retry-After`` (at least ``BUSY_RETRY_SECONDS``) and waits for the budget again."""
        if failure.status is not None and self.budget is not None:
            self.budget.refused(attempt.tenant, failure.retry_after)
        delay = max(failure.retry_after or 0.0, BUSY_RETRY_SECONDS)
        delay += delay * self.policy.jitter * self.rng.random()
        metrics.EVENTS_RETRIED.labels(retry_reason(failure)).inc()
        return self._defer(attempt, delay, failure.error)

    def _defer(self, attempt: Attempt, delay: float, why: str) -> Outcome:
        self.forwarder.retry_later(attempt, delay)
        return self._report(attempt, Outcome.DEFERRED, f"{why}; back in {delay:.1f}s")

    def _healthy(self) -> None:
        if self.guard is not None:
            self.guard.record_success()

    def _dead_letter(
        self, attempt: Attempt, *, reason: str, error: str, status: int | None
    ) -> Outcome:
        letter = DeadLetter(
            reason=reason,
            error=error,
            attempts=attempt.number,
            event_id=attempt.event.event_id,
            correlation_id=str(attempt.correlation_id),
            status=status,
            first_attempt_at=attempt.first_attempt_at,
        )
        self.forwarder.dead_letter(attempt.envelope, letter)
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
        # The API refusing an event is the producer's business, not a fault of ccsync: a
        # warning. Exhausted retries and poison messages need someone to look: errors.
        level = logging.WARNING if reason == REASON_API_REJECTED else logging.ERROR
        return self._report(attempt, Outcome.DEAD_LETTERED, f"({reason}): {error}", level=level)

    def _report(
        self,
        attempt: Attempt,
        outcome: Outcome,
        detail: str,
        *,
        level: int = logging.INFO,
        duration: float | None = None,
    ) -> Outcome:
        """One log line per outcome, with the fields operators search by; counts it."""
        _COUNTERS.get(outcome, _no_counter)()
        event = attempt.event
        fields: dict[str, object] = {
            "eventId": event.event_id,
            "correlationId": str(attempt.correlation_id),
            "tenant": attempt.tenant,
            "customerId": str(event.customer_id),
            "outcome": outcome.value,
            "attempt": attempt.number,
        }
        if duration is not None:
            fields["duration"] = duration
        message = ("event %s %s %s", event.event_id, _VERB[outcome], detail)
        if level < logging.ERROR or not sentry_sdk.is_initialized():
            log.log(level, *message, extra=fields)
            return outcome
        # Only ERROR lines become Sentry events: they carry the event's tags.
        with sentry_sdk.new_scope() as scope:
            for key in ("eventId", "correlationId", "tenant"):
                scope.set_tag(key, fields[key])
            log.log(level, *message, extra=fields)
        return outcome


@contextlib.contextmanager
def _abandoned_on_error(call: Call) -> Iterator[None]:
    """Abandons ``call`` (``Call.abandon``) if the block raises, and lets the exception go on."""
    try:
        yield
    except BaseException:
        call.abandon()
        raise


def _change(call: Call) -> Change:
    event = call.attempt.event
    return Change(
        tenant=call.attempt.tenant,
        customer_id=event.customer_id,
        reseller_id=event.reseller_id,
        internal_identifier=event.internal_identifier,
        correlation_id=call.attempt.correlation_id,
    )
