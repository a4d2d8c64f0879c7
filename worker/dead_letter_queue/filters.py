"""Which dead letters an operator means: the filters every ``ccsync dlq`` command takes.

Values within one filter are alternatives (``--reason a --reason b``); different filters must all
hold. A dead letter lacking the field a filter asks about does not match it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.events import correlation_id


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date or timestamp; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO timestamp (like 2024-05-01 or 2024-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeadLetterFilter:
    reasons: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    tenants: tuple[str, ...] = ()
    customers: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    @classmethod
    def build(
        cls,
        *,
        reasons: Iterable[str] = (),
        statuses: Iterable[int] = (),
        tenants: Iterable[str] = (),
        customers: Iterable[str] = (),
        event_ids: Iterable[str] = (),
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> DeadLetterFilter:
        return cls(
            reasons=frozenset(reasons),
            statuses=frozenset(int(status) for status in statuses),
            tenants=tuple(dict.fromkeys(tenants)),
            customers=frozenset(customer.strip().lower() for customer in customers),
            event_ids=frozenset(event_ids),
            since=parse_timestamp(since) if isinstance(since, str) else since,
            until=parse_timestamp(until) if isinstance(until, str) else until,
        )

    @property
    def selects_everything(self) -> bool:
        return self == DeadLetterFilter()

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.reasons and record.reason not in self.reasons:
            return False
        if self.statuses and record.status not in self.statuses:
            return False
        if self.event_ids and record.event_id not in self.event_ids:
            return False
        if self.customers and (record.customer_id or "").lower() not in self.customers:
            return False
        if self.tenants and not self._tenant_matches(record):
            return False
        if self.since is not None or self.until is not None:
            moment = record.dead_lettered_at
            if moment is None:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment >= self.until:
                return False
        return True

    def _tenant_matches(self, record: DeadLetterRecord) -> bool:
        if record.tenant is not None:
            # Tenants are portal domains: compared without case, as CloudCockpit does.
            return record.tenant.casefold() in {tenant.casefold() for tenant in self.tenants}
        # An event without a tenant went out with CLOUDCOCKPIT_TENANT; the correlation id
        # recorded on its dead letter is derived from that tenant, and so tells which one it was.
        recorded, event_id = record.correlation_id, record.event_id
        if recorded is None or event_id is None:
            return False
        return any(str(correlation_id(tenant, event_id)) == recorded for tenant in self.tenants)

    def describe(self) -> str:
        """The filters in the words of the command line, for prompts and reports."""
        parts = [f"--reason {reason}" for reason in sorted(self.reasons)]
        parts += [f"--status {status}" for status in sorted(self.statuses)]
        parts += [f"--tenant {tenant}" for tenant in self.tenants]
        parts += [f"--customer {customer}" for customer in sorted(self.customers)]
        parts += [f"--event-id {event_id}" for event_id in sorted(self.event_ids)]
        if self.since is not None:
            parts.append(f"--since {self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"--until {self.until.isoformat()}")
        return " ".join(parts) if parts else "no filter: every dead letter"


@dataclass
class Selection:
    """Counts of a pass: how many dead letters were looked at and how many matched."""

    examined: int = 0
    matched: int = 0


def select(
    records: Iterable[DeadLetterRecord],
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    selection: Selection | None = None,
    on_examined: Callable[[int], None] | None = None,
) -> Iterator[DeadLetterRecord]:
    """The first ``limit`` records that match; fetching stops as soon as that many matched."""
    counts = selection if selection is not None else Selection()
    if limit is not None and limit <= 0:
        return
    for record in records:
        counts.examined += 1
        if on_examined is not None:
            on_examined(1)
        if not filters.matches(record):
            continue
        counts.matched += 1
        yield record
        if limit is not None and counts.matched >= limit:
            return
