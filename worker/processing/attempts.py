"""One try of one event (``Attempt``), and what its call found (``Call``).

An attempt travels: the intake makes the first, each retry message carries the next. A call is
an attempt's passage through the ledger and CloudCockpit, which ``Applier.conclude`` turns into
an outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from worker.constants import DELIVERY_LIMIT
from worker.events import IdentifierChanged, correlation_id
from worker.exceptions import CcsyncError
from worker.observability import tracing
from worker.observability.tracing import Traced
from worker.processing.dead_letters import Envelope
from worker.processing.ledger import Hold, Relationship, Verdict
from worker.processing.outage import Trial


@dataclass(frozen=True)
class Attempt:
    """One try of one event, as carried by a task message."""

    event: IdentifierChanged
    envelope: Envelope
    number: int
    first_attempt_at: str
    #: The token of a lock an earlier attempt of this event took and could not release (Redis
    #: went away before it could leave): this attempt may take that lock over as its own.
    inherited_lock: str | None = None

    @cached_property
    def correlation_id(self) -> uuid.UUID:
        return correlation_id(self.tenant, self.event.event_id)

    def age_seconds(self) -> float:
        """Since the intake took the event (the first attempt), retries included."""
        return (datetime.now(UTC) - datetime.fromisoformat(self.first_attempt_at)).total_seconds()

    def next(self) -> Attempt:
        return replace(self, number=self.number + 1)

    def inheriting(self, lock_token: str) -> Attempt:
        """This attempt, entitled to take over the lock ``lock_token`` of its own event."""
        return replace(self, inherited_lock=lock_token)

    @property
    def tenant(self) -> str:
        # The intake resolved the tenant (event or CLOUDCOCKPIT_TENANT) before making the task.
        assert self.event.tenant is not None
        return self.event.tenant

    def to_task_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "event": self.event.to_wire(),
            "envelope": self.envelope.to_wire(),
            "attempt": self.number,
            "first_attempt_at": self.first_attempt_at,
        }
        # Only when set: a worker of an earlier version can still run every other retry.
        if self.inherited_lock is not None:
            kwargs["inherited_lock"] = self.inherited_lock
        return kwargs

    @classmethod
    def from_task_kwargs(
        cls,
        *,
        event: dict[str, Any],
        envelope: dict[str, Any],
        attempt: int,
        first_attempt_at: str,
        inherited_lock: str | None = None,
    ) -> Attempt:
        return cls(
            IdentifierChanged.model_validate(event),
            Envelope.from_wire(envelope),
            attempt,
            first_attempt_at,
            inherited_lock,
        )

    @classmethod
    def first(cls, event: IdentifierChanged, envelope: Envelope) -> Attempt:
        return cls(event, envelope, 1, datetime.now(UTC).isoformat())


@dataclass
class Call:
    """An attempt up to the end of its call: what the ledger and CloudCockpit said.

    ``hold`` is the relationship while held; ``outage`` says the call was not made because
    outage protection was on; ``trial``, when the call is the one a half-open outage guard let
    through, is what ends it; ``backfill`` says that its event came on the backfill lane, to be
    called after live ones; ``failure`` is what went wrong, if anything did; ``trace`` is the
    attempt's span and the trace context its call carries, if any.

    A call ends once: ``Applier.conclude`` gives it an outcome, or whoever drops it without
    one (its message requeued) calls ``abandon``.
    """

    attempt: Attempt
    relationship: Relationship
    delivery_count: int = 0
    outage: bool = False
    trial: Trial | None = None
    backfill: bool = False
    hold: Hold | None = None
    verdict: Verdict | None = None
    failure: CcsyncError | None = None
    duration: float | None = None
    trace: Traced | None = None

    @property
    def needs_relationship(self) -> bool:
        """Still to take its relationship before calling."""
        return (
            self.hold is None
            and self.failure is None
            and not self.outage
            and self.delivery_count < DELIVERY_LIMIT
        )

    def abandon(self) -> None:
        """Dropped without an outcome (a bug; its message goes back to the queue): its trial
        ends, so that the outage guard lets the next call through, and so does its span. Once
        only; the relationship is left to ``Applier.leave_all`` or to its lock's expiry."""
        if self.trial is not None:
            self.trial.end()
            self.trial = None
        if self.trace is not None:
            tracing.end_attempt(self.trace, "no-outcome", failed=True)
            self.trace = None
