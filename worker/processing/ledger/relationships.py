"""Relationships and the order of their events: what the ledger keys and compares by."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.events import IdentifierChanged

#: Bytes of the name's digest that make a relationship's hash tag on a cluster: 8 hex digits
#: spread relationships over all 16,384 slots; which ones share a slot does not matter.
CLUSTER_TAG_BYTES = 4

_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_ONE_DAY_MICROS = 86_400_000_000


@dataclass(frozen=True)
class Relationship:
    tenant: str
    customer_id: str
    reseller_id: str | None

    @classmethod
    def of(cls, event: IdentifierChanged) -> Relationship:
        assert event.tenant is not None
        reseller = str(event.reseller_id) if event.reseller_id else None
        return cls(event.tenant.lower(), str(event.customer_id), reseller)

    @property
    def name(self) -> str:
        return f"{self.tenant}|{self.customer_id}|{self.reseller_id or 'self'}"


def order_key(event: IdentifierChanged) -> str:
    """Sorts as text in event order: fixed-width UTC microseconds, then the eventId."""
    return order_key_at(event.occurred_at, event.event_id)


def order_key_at(occurred_at: datetime, event_id: str) -> str:
    """The order key of the event ``event_id`` that occurred at ``occurred_at`` (aware)."""
    # Integer arithmetic from a day before year 1 in UTC: exact to the microsecond and never
    # negative, even for year 1 with an offset east of UTC.
    micros = (occurred_at - _YEAR_ONE) // timedelta(microseconds=1) + _ONE_DAY_MICROS
    return f"{micros:020d}|{event_id}"


def relationship_named(name: str) -> Relationship | None:
    """The relationship whose ``Relationship.name`` (perhaps in a hash tag's braces) is
    ``name``; None for a name no relationship has. The tenant may hold ``|``, the customer and
    the reseller (or ``self``) never do."""
    if name.startswith("{") and name.endswith("}"):
        name = name[1:-1]
    parts = name.rsplit("|", 2)
    if len(parts) != 3 or not all(parts):
        return None
    tenant, customer_id, reseller = parts
    return Relationship(tenant, customer_id, None if reseller == "self" else reseller)


def cluster_tag(name: str) -> str:
    """The hash tag of a relationship's keys on a cluster: hex digits of a digest of its name,
    which keeps both keys in one slot whatever the name holds (braces included)."""
    return hashlib.blake2b(name.encode(), digest_size=CLUSTER_TAG_BYTES).hexdigest()
