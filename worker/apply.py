"""The outcome of one attempt: call CloudCockpit, then applied, retry later, or dead letter.

Free of Celery so that every branch can be tested by calling ``apply_event`` directly.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

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
from worker.exceptions import ApiRejected, TransientFailure

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class Attempt:
    """One try of one event, as carried by a task message."""

    event: IdentifierChanged
    envelope: Envelope
    number: int
    first_attempt_at: str

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


def apply_event(
    attempt: Attempt,
    api: CloudCockpitClient,
    publisher: Publisher,
    policy: RetryPolicy,
    rng: random.Random,
    delivery_count: int = 0,
) -> Outcome:
    event = attempt.event
    correlation = str(correlation_id(attempt.tenant, event.event_id))

    def dead_letter(reason: str, error: str, status: int | None) -> Outcome:
        letter = DeadLetter(
            reason=reason,
            error=error,
            attempts=attempt.number,
            event_id=event.event_id,
            correlation_id=correlation,
            status=status,
            first_attempt_at=attempt.first_attempt_at,
        )
        publisher.dead_letter(attempt.envelope, letter)
        log.warning("event %s dead-lettered (%s): %s", event.event_id, reason, error)
        return Outcome.DEAD_LETTERED

    if delivery_count >= DELIVERY_LIMIT:
        return dead_letter(
            REASON_DELIVERY_LIMIT,
            f"delivered {delivery_count} times without an outcome: "
            "the worker crashed or hung on it",
            None,
        )
    try:
        api.set_internal_identifier(
            tenant=attempt.tenant,
            customer_id=event.customer_id,
            reseller_id=event.reseller_id,
            internal_identifier=event.internal_identifier,
            correlation_id=correlation_id(attempt.tenant, event.event_id),
        )
    except ApiRejected as exc:
        return dead_letter(REASON_API_REJECTED, exc.error, exc.status)
    except TransientFailure as exc:
        delay = policy.delay_after(attempt.number, exc, rng)
        if delay is None:
            return dead_letter(REASON_RETRIES_EXHAUSTED, exc.error, exc.status)
        publisher.retry_later(
            Attempt(event, attempt.envelope, attempt.number + 1, attempt.first_attempt_at), delay
        )
        log.info(
            "event %s attempt %d failed (%s); retry in %.1fs",
            event.event_id,
            attempt.number,
            exc.error,
            delay,
        )
        return Outcome.RETRYING
    log.info("event %s applied (attempt %d)", event.event_id, attempt.number)
    return Outcome.APPLIED
