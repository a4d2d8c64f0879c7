"""``ccsync verify``: is CloudCockpit actually right? (contract section 6)

For each relationship the ledger holds a record of (``Ledger.records``: SCAN, never KEYS), the
internal identifier is read back with ``GET /v1/Customers/{customerId}?resellerId=`` and compared
with the value the newest event applied:

- ``in-sync``: CloudCockpit holds that value;
- ``drift``: it holds another one (someone changed it behind ccsync's back, or a write was lost);
- ``missing``: CloudCockpit no longer knows the customer (404) or the relationship (403); not
  drift, and nothing to repair;
- ``unknown``: the record was written before the ledger kept values, so there is nothing to
  compare with; not drift;
- ``error``: the read failed (after ``READ_ATTEMPTS`` tries for a transient failure).

A repair writes the recorded value back the way the worker writes: with the relationship's lock
held, fenced over the whole call, and only if the ledger still holds the very record that was
compared. A newer event applied since then wins (the repair is ``superseded`` and writes
nothing); one that arrives during the repair waits for the lock and lands after it. A repair
whose call may still be applied late (a 5xx, no answer) keeps the relationship held for the
unanswered hold, as an event's call does. The rate (``Pace``), and the fleet's rate budget of
the tenant (``RateBudget``, shared with the workers), are waited for before the lock is taken,
never between the fence and the call; a repair whose lease ran out before its call ended
is ``failed``, not ``repaired``: another event may have written meanwhile. The ledger is left as
it was: a repair records no event of its own.

Free of the runtime and the CLI: tests call ``Verifier`` directly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from worker.cloudcockpit.client import Change, CloudCockpitClient
from worker.exceptions import (
    ApiError,
    ApiRejected,
    ApiUnavailable,
    LedgerUnavailable,
    RateLimited,
    RelationshipBusy,
    TransientFailure,
)
from worker.observability import metrics
from worker.processing.budget import RateBudget
from worker.processing.ledger import Hold, Ledger, Relationship
from worker.processing.ledger.records import AppliedRecord

#: Tries of one read back before its relationship is reported as ``error``.
READ_ATTEMPTS = 3
#: Pause before the second try of a read that failed transiently; it doubles after each.
READ_RETRY_PAUSE_SECONDS = 1.0
#: Longest pause a 429's ``Retry-After`` may impose on one read before it counts as failed.
LONGEST_RETRY_AFTER_SECONDS = 30.0
#: What a repair's lock is taken for, followed by a random id: no event's linger is ever its own.
REPAIR_HOLDER_PREFIX = "ccsync-verify-repair-"


class Status(StrEnum):
    IN_SYNC = "in-sync"
    DRIFT = "drift"
    MISSING = "missing"
    UNKNOWN = "unknown"
    ERROR = "error"


class RepairOutcome(StrEnum):
    REPAIRED = "repaired"
    SUPERSEDED = "superseded"
    BUSY = "busy"
    FAILED = "failed"


@dataclass(frozen=True)
class Filters:
    """Which relationships to check: all, or those of a tenant (any case), of a customer, and
    applied since a moment. A record from before values were kept has no applied-at: its event's
    ``occurredAt`` stands in for it (an event is applied after it occurred, give or take the
    producers' clock skew)."""

    tenant: str | None = None
    customer_id: uuid.UUID | None = None
    since: datetime | None = None

    def admit(self, relationship: Relationship, record: AppliedRecord) -> bool:
        if self.tenant is not None and relationship.tenant != self.tenant.lower():
            return False
        if self.customer_id is not None and relationship.customer_id != str(self.customer_id):
            return False
        if self.since is not None:
            when = _applied_at(record)
            return when is not None and when >= self.since
        return True


@dataclass(frozen=True)
class Check:
    """One relationship read back. ``expected`` is the value the newest event applied (None, and
    meaningless, when ``status`` is ``unknown``); ``actual`` what CloudCockpit holds (None when
    ``missing`` or ``error``)."""

    relationship: Relationship
    record: AppliedRecord
    status: Status
    actual: str | None = None
    detail: str | None = None

    @property
    def expected(self) -> str | None:
        return self.record.value if self.record.value_known else None

    def to_json(self) -> dict[str, Any]:
        """The object ``ccsync verify --json`` prints for it (contract section 6)."""
        document: dict[str, Any] = {
            "tenant": self.relationship.tenant,
            "customerId": self.relationship.customer_id,
            "resellerId": self.relationship.reseller_id,
            "expected": self.expected,
            "actual": self.actual,
            "status": self.status.value,
            "eventId": self.record.event_id,
            "appliedAt": _iso(_applied_at(self.record) if self.record.value_known else None),
        }
        if self.detail is not None:
            document["detail"] = self.detail
        return document


@dataclass(frozen=True)
class Repair:
    check: Check
    outcome: RepairOutcome
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The object ``ccsync verify --repair --json`` prints after the checks."""
        document = self.check.to_json()
        document["repair"] = self.outcome.value
        document["repairDetail"] = self.detail
        return document


@dataclass
class Tally:
    """How many relationships ended in each status, and repairs in each outcome."""

    statuses: dict[Status, int] = field(default_factory=lambda: dict.fromkeys(Status, 0))
    repairs: dict[RepairOutcome, int] = field(
        default_factory=lambda: dict.fromkeys(RepairOutcome, 0)
    )

    @property
    def checked(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> str:
        line = f"checked {self.checked}: " + ", ".join(
            f"{count} {status.value}" for status, count in self.statuses.items()
        )
        if any(self.repairs.values()):
            line += "; repairs: " + ", ".join(
                f"{count} {outcome.value}" for outcome, count in self.repairs.items() if count
            )
        return line


class Pace:
    """At most ``per_second`` calls a second (None: no bound), spread evenly: each ``wait``
    returns no sooner than ``1 / per_second`` after the previous one returned. Thread-safe."""

    def __init__(
        self,
        per_second: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second is not None and per_second <= 0:
            raise ValueError("a rate must be positive")
        self._interval = 0.0 if per_second is None else 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._sleep(self._next - now)
                now = self._next
            self._next = now + self._interval


class Verifier:
    """Reads relationships back and repairs drift; every call to CloudCockpit waits on ``pace``,
    and on ``budget``, the tenant's API rate budget, if given."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        api: CloudCockpitClient,
        pace: Pace | None = None,
        budget: RateBudget | None = None,
        unanswered_hold_seconds: float,
        call_lease_seconds: float,
        read_retry_pause_seconds: float = READ_RETRY_PAUSE_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.api = api
        self.pace = pace or Pace(None)
        self.budget = budget
        self.unanswered_hold_seconds = unanswered_hold_seconds
        self.call_lease_seconds = call_lease_seconds
        self.read_retry_pause_seconds = read_retry_pause_seconds

    def relationships(self, filters: Filters) -> Iterator[tuple[Relationship, AppliedRecord]]:
        """Every relationship the ledger holds a record of that ``filters`` admits."""
        for relationship, record in self.ledger.records():
            if filters.admit(relationship, record):
                yield relationship, record

    def count(self, filters: Filters) -> int:
        """How many relationships ``checks`` would check now (a scan without reading back)."""
        return sum(1 for _ in self.relationships(filters))

    def checks(self, filters: Filters) -> Iterator[Check]:
        for relationship, record in self.relationships(filters):
            yield self.check(relationship, record)

    def check(self, relationship: Relationship, record: AppliedRecord) -> Check:
        """Reads the relationship back and compares; counted in ``ccsync_verify_checked_total``."""
        check = self._check(relationship, record)
        metrics.VERIFY_CHECKED.labels(check.status.value).inc()
        return check

    def _check(self, relationship: Relationship, record: AppliedRecord) -> Check:
        failure: ApiError | None = None
        pause = self.read_retry_pause_seconds
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                self._wait_for_rate(relationship.tenant)
                reading = self.api.read_internal_identifier(
                    tenant=relationship.tenant,
                    customer_id=uuid.UUID(relationship.customer_id),
                    reseller_id=_reseller(relationship),
                )
            except ApiRejected as exc:
                return Check(relationship, record, Status.ERROR, detail=exc.error)
            except TransientFailure as exc:
                failure = exc
                wait = exc.retry_after if isinstance(exc, RateLimited) else None
                if wait is not None and exc.status is not None and self.budget is not None:
                    self.budget.refused(relationship.tenant, wait)
                if attempt == READ_ATTEMPTS or (wait or 0) > LONGEST_RETRY_AFTER_SECONDS:
                    break
                time.sleep(max(pause, wait or 0))
                pause *= 2
                continue
            if not reading.found:
                detail = "no such customer" if reading.status == 404 else "no such relationship"
                return Check(relationship, record, Status.MISSING, detail=detail)
            actual = reading.internal_identifier
            if not record.value_known:
                return Check(relationship, record, Status.UNKNOWN, actual=actual)
            status = Status.IN_SYNC if actual == record.value else Status.DRIFT
            return Check(relationship, record, status, actual=actual)
        assert failure is not None
        return Check(relationship, record, Status.ERROR, detail=failure.error)

    def repair(self, check: Check) -> Repair:
        """Writes the recorded value back, if the ledger still holds the record ``check``
        compared; counted in ``ccsync_verify_repairs_total``."""
        if check.status is not Status.DRIFT:
            raise ValueError(f"only drift is repaired, not {check.status.value}")
        outcome, detail = self._repair(check)
        metrics.VERIFY_REPAIRS.labels(outcome.value).inc()
        return Repair(check, outcome, detail)

    def _repair(self, check: Check) -> tuple[RepairOutcome, str]:
        relationship = check.relationship
        holder = f"{REPAIR_HOLDER_PREFIX}{uuid.uuid4().hex}"
        try:
            # Waited for before the lock is taken: a wait after the fence would eat the call's
            # lease.
            self._wait_for_rate(relationship.tenant)
            hold = self.ledger.acquire(relationship, holder)
        except RelationshipBusy as exc:
            return RepairOutcome.BUSY, str(exc)
        except (LedgerUnavailable, RateLimited) as exc:
            return RepairOutcome.FAILED, str(exc)
        # Set before the fence is asked for, so no later than the lease it grants runs out.
        lease_ends = time.monotonic() + self.call_lease_seconds
        try:
            outcome, detail = self._write_back(check, hold)
        finally:
            kept = self._leave(hold)
        if outcome is RepairOutcome.REPAIRED and not (
            kept or (kept is None and time.monotonic() <= lease_ends)
        ):
            return (
                RepairOutcome.FAILED,
                f"{detail}, but the repair's lease on the relationship ran out before its call "
                "ended: another event may have written since; run ccsync verify again",
            )
        return outcome, detail

    def _wait_for_rate(self, tenant: str) -> None:
        """``pace``, then the tenant's slot in the fleet's rate budget; ``RateLimited`` when the
        budget is spent for too long, ``LedgerUnavailable`` when Redis does not answer."""
        self.pace.wait()
        if self.budget is not None:
            self.budget.wait(tenant)

    def _leave(self, hold: Hold) -> bool | None:
        """Whether the repair's lock was still its own when it left; None if Redis could not
        say (the lock then expires by itself)."""
        try:
            [kept] = self.ledger.leave_all([hold])
        except LedgerUnavailable:
            return None
        return kept

    def _write_back(self, check: Check, hold: Hold) -> tuple[RepairOutcome, str]:
        relationship = check.relationship
        try:
            # The call must be covered by the lock, and judged by what the ledger holds then.
            self.ledger.fence(hold, lease_seconds=self.call_lease_seconds)
        except RelationshipBusy as exc:
            return RepairOutcome.BUSY, str(exc)
        except LedgerUnavailable as exc:
            return RepairOutcome.FAILED, str(exc)
        current = hold.stored_record
        if current is None or current.order_key != check.record.order_key:
            return (
                RepairOutcome.SUPERSEDED,
                "the ledger moved on since the check: a newer event won",
            )
        try:
            self.api.set_internal_identifier(
                Change(
                    tenant=relationship.tenant,
                    customer_id=uuid.UUID(relationship.customer_id),
                    reseller_id=_reseller(relationship),
                    internal_identifier=current.value,
                    # A new id: CloudCockpit may take the event's own as a call already made.
                    correlation_id=uuid.uuid4(),
                )
            )
        except ApiUnavailable as exc:
            if exc.unsettled:
                # A late write of this repair must not land after a newer event.
                hold.linger(self.unanswered_hold_seconds)
            return RepairOutcome.FAILED, exc.error
        except ApiError as exc:
            return RepairOutcome.FAILED, exc.error
        return RepairOutcome.REPAIRED, f"wrote back {_shown(current.value)}"


def _reseller(relationship: Relationship) -> uuid.UUID | None:
    return None if relationship.reseller_id is None else uuid.UUID(relationship.reseller_id)


def _applied_at(record: AppliedRecord) -> datetime | None:
    if record.applied_at is not None:
        return datetime.fromtimestamp(record.applied_at, UTC)
    return record.occurred_at


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _shown(value: str | None) -> str:
    return "null" if value is None else repr(value)
