"""A relationship held by one event: what was applied before it, and what to do on leaving."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from worker.events import IdentifierChanged
from worker.processing.ledger.records import (
    AppliedRecord,
    format_record,
    parse_record,
    record_order_key,
)
from worker.processing.ledger.relationships import order_key

#: What a lock lingering for an event holds before the event's id (``Hold.linger``).
LINGER_PREFIX = "linger:"


@dataclass(frozen=True)
class LockState:
    """A relationship's lock as the ledger holds it: what holds it, and for how much longer.

    The holder is an event's random token while the event is being applied, or
    ``LINGER_PREFIX`` and an event's id while the relationship lingers for that event (its call
    got no definite answer, and its retry may still land)."""

    holder: str
    remaining_seconds: float

    @property
    def lingering_for(self) -> str | None:
        """The event the lock lingers for, or None when an event holds it to be applied."""
        if not self.holder.startswith(LINGER_PREFIX):
            return None
        return self.holder.removeprefix(LINGER_PREFIX)


class Verdict(StrEnum):
    NEW = "new"
    STALE = "stale"
    DUPLICATE = "duplicate"


class Hold:
    """A relationship held by one event: what was applied before, and what to do on leaving."""

    def __init__(
        self,
        keys: list[str],
        *,
        token: str,
        linger_value: str,
        stored: str | None,
        lingering_until: float,
    ) -> None:
        """``stored``: the record the ledger held when the relationship was taken
        (``worker.processing.ledger.records``); ``self.stored`` is its order key."""
        self.keys = keys
        self.token = token
        self.linger_value = linger_value
        self.stored: str | None = None
        self._stored_record: str | None = None
        self.refresh(stored)
        self.record: str | None = None
        # A linger inherited from an earlier attempt of the same event is kept, not cut short.
        self.linger_until = lingering_until

    def verdict(self, event: IdentifierChanged) -> Verdict:
        if self.stored is None:
            return Verdict.NEW
        candidate = order_key(event)
        if candidate == self.stored:
            return Verdict.DUPLICATE
        return Verdict.STALE if candidate < self.stored else Verdict.NEW

    def refresh(self, stored: str | bytes | None) -> None:
        """What the ledger holds now, as Redis returned it."""
        self._stored_record = stored.decode() if isinstance(stored, bytes) else stored
        self.stored = record_order_key(self._stored_record)

    @property
    def stored_record(self) -> AppliedRecord | None:
        """The stored record in full (value included), read only when asked for."""
        return None if self._stored_record is None else parse_record(self._stored_record)

    def applied(self, event: IdentifierChanged) -> None:
        """Record the event as the relationship's newest when the hold ends, with the value it
        applied (``ccsync verify`` compares CloudCockpit with it)."""
        self.record = format_record(
            order_key(event), event.internal_identifier, applied_at=time.time()
        )

    def linger(self, seconds: float) -> None:
        """After a call whose fate is unknown (the server may still apply it late), newer events
        of the relationship must not overtake it: they wait until it has surely settled."""
        self.linger_until = max(self.linger_until, time.monotonic() + seconds)

    def leave_args(self) -> list[str | int]:
        linger_ms = max(0, int((self.linger_until - time.monotonic()) * 1000))
        return [self.token, self.record or "", linger_ms, self.linger_value]
