"""The outcome of one attempt: consult the ledger, call CloudCockpit, then applied, stale,
duplicate, retry later, wait out an outage, or dead letter.

Free of Celery so that every branch can be tested by calling ``Applier.apply`` directly.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

import sentry_sdk

from worker import metrics
from worker.backoff import RetryPolicy
from worker.client import CloudCockpitClient
from worker.constants import (
    DELIVERY_LIMIT,
    REASON_API_REJECTED,
    REASON_DELIVERY_LIMIT,
    REASON_RETRIES_EXHAUSTED,
)
from worker.dead_letters import DeadLetter, Envelope
from worker.events import IdentifierChanged, correlation_id
from worker.exceptions import (
    ApiRejected,
    ApiUnavailable,
    LedgerUnavailable,
    RelationshipBusy,
    TokenRejected,
    TokenUnavailable,
    TransientFailure,
)
from worker.ledger import Ledger, Relationship, Verdict
from worker.outage import OutageGuard

log = logging.getLogger(__name__)


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
    Outcome.RETRYING: metrics.EVENTS_RETRIED.inc,
}


@dataclass(frozen=True)
class Attempt:
    """One try of one event, as carried by a task message."""

    event: IdentifierChanged
    envelope: Envelope
    number: int
    first_attempt_at: str

    @cached_property
    def correlation_id(self) -> uuid.UUID:
        return correlation_id(self.tenant, self.event.event_id)

    def age_seconds(self) -> float:
        """Since the intake took the event (the first attempt), retries included."""
        return (datetime.now(UTC) - datetime.fromisoformat(self.first_attempt_at)).total_seconds()

    def next(self) -> Attempt:
        return Attempt(self.event, self.envelope, self.number + 1, self.first_attempt_at)

    @property
    def tenant(self) -> str:
        # The intake resolved the tenant (event or CLOUDCOCKPIT_TENANT) before making the task.
        assert self.event.tenant is not None
        return self.event.tenant

    def to_task_kwargs(self) -> dict[str, Any]:
        return {
            "event": self.event.to_wire(),
            "envelope": self.envelope.to_wire(),
            "attempt": self.number,
            "first_attempt_at": self.first_attempt_at,
        }

    @classmethod
    def from_task_kwargs(
        cls, event: dict[str, Any], envelope: dict[str, Any], attempt: int, first_attempt_at: str
    ) -> Attempt:
        return cls(
            IdentifierChanged.model_validate(event),
            Envelope.from_wire(envelope),
            attempt,
            first_attempt_at,
        )

    @classmethod
    def first(cls, event: IdentifierChanged, envelope: Envelope) -> Attempt:
        return cls(event, envelope, 1, datetime.now(UTC).isoformat())


class Publisher(Protocol):
    """Where an attempt goes next; both calls return only once the broker has the message."""

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None: ...

    def dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None: ...


# Failures that say the API or the ledger as a whole is down, not that this event is bad.
SYSTEMIC_FAILURES = (ApiUnavailable, TokenRejected, TokenUnavailable, LedgerUnavailable)
BUSY_RETRY_SECONDS = 1.0
# How long CloudCockpit might still apply a request we stopped waiting for: newer events of the
# relationship wait this long so that a late write cannot land after them.
UNSETTLED_LINGER_SECONDS = 30.0


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
        api: CloudCockpitClient,
        ledger: Ledger,
        publisher: Publisher,
        policy: RetryPolicy,
        guard: OutageGuard | None = None,
        rng: random.Random | None = None,
        unsettled_linger_seconds: float = UNSETTLED_LINGER_SECONDS,
    ) -> None:
        self.api = api
        self.ledger = ledger
        self.publisher = publisher
        self.policy = policy
        self.guard = guard
        self.rng = rng or random.Random()
        self.probe_target: ProbeTarget | None = None
        self.unsettled_linger_seconds = unsettled_linger_seconds

    def apply(self, attempt: Attempt, delivery_count: int = 0) -> Outcome:
        event = attempt.event
        if delivery_count >= DELIVERY_LIMIT:
            return self._dead_letter(
                attempt,
                REASON_DELIVERY_LIMIT,
                f"delivered {delivery_count} times without an outcome: "
                "the worker crashed or hung on it",
                None,
            )
        if self.guard is not None and self.guard.is_open:
            return self._defer(attempt, self.guard.retry_in, "outage protection is on")
        relationship = Relationship.of(event)
        try:
            with self.ledger.hold(relationship, event.event_id) as hold:
                verdict = hold.verdict(event)
                if verdict is Verdict.STALE:
                    return self._report(attempt, Outcome.STALE, "a newer one was applied")
                if verdict is Verdict.DUPLICATE:
                    return self._report(attempt, Outcome.DUPLICATE, "already applied")
                started = time.monotonic()
                try:
                    self.api.set_internal_identifier(
                        tenant=attempt.tenant,
                        customer_id=event.customer_id,
                        reseller_id=event.reseller_id,
                        internal_identifier=event.internal_identifier,
                        correlation_id=attempt.correlation_id,
                    )
                except ApiUnavailable as exc:
                    if exc.unsettled:
                        # A late write of this event must not land after a newer one.
                        hold.linger(self.unsettled_linger_seconds)
                    raise
                hold.applied(event)
        except RelationshipBusy as exc:
            return self._defer(attempt, BUSY_RETRY_SECONDS, str(exc))
        except ApiRejected as exc:
            self._healthy()
            return self._dead_letter(attempt, REASON_API_REJECTED, exc.error, exc.status)
        except TransientFailure as exc:
            return self._failed(attempt, exc)
        self._healthy()
        duration = time.monotonic() - started
        metrics.API_REQUEST_SECONDS.observe(duration)
        metrics.PUBLISH_TO_APPLY_SECONDS.observe(attempt.age_seconds())
        return self._report(
            attempt, Outcome.APPLIED, f"attempt {attempt.number}", duration=round(duration, 4)
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
                attempt, REASON_RETRIES_EXHAUSTED, failure.error, failure.status
            )
        self.publisher.retry_later(attempt.next(), delay)
        return self._report(attempt, Outcome.RETRYING, f"{failure.error}; retry in {delay:.1f}s")

    def _defer(self, attempt: Attempt, delay: float, why: str) -> Outcome:
        self.publisher.retry_later(attempt, delay)
        return self._report(attempt, Outcome.DEFERRED, f"{why}; back in {delay:.1f}s")

    def _healthy(self) -> None:
        if self.guard is not None:
            self.guard.record_success()

    def _dead_letter(
        self, attempt: Attempt, reason: str, error: str, status: int | None
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
        self.publisher.dead_letter(attempt.envelope, letter)
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
        # The API refusing an event is the producer's business, not a fault of ccsync: a
        # warning. Exhausted retries and poison messages need someone to look: errors.
        level = logging.WARNING if reason == REASON_API_REJECTED else logging.ERROR
        return self._report(attempt, Outcome.DEAD_LETTERED, f"({reason}): {error}", level)

    def _report(
        self,
        attempt: Attempt,
        outcome: Outcome,
        detail: str,
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
