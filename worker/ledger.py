"""What was applied per relationship, in Redis: the newest event wins, duplicates are absorbed.

A relationship is (tenant, customer, reseller-or-own). For each, Redis keeps the order key
``(occurredAt, eventId)`` of the last event applied, and a lock that serialises its events across
every thread, process and machine, so that two workers never race two events of one customer to
CloudCockpit. Ordering is by ``occurredAt`` as UTC microseconds, ties broken by ``eventId``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import redis

from worker.events import IdentifierChanged
from worker.exceptions import LedgerUnavailable, RelationshipBusy

KEY_PREFIX = "ccsync"
# Longer than any call can last (its timeouts add up to well under a minute), so a lock only
# expires by itself when its holder died.
LOCK_TTL_MS = 60_000
# Long enough to outlive any replay an operator would do; bounds Redis memory for dead customers.
LEDGER_TTL_SECONDS = 180 * 24 * 3600

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_LINGER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Writes the new order key only if it is newer than the stored one: safe even if a lock expired.
# Compared byte by byte, as Python compares the same keys: Lua's own string order follows the
# server's locale.
_RECORD = """
local current = redis.call('get', KEYS[1])
if current then
  local new = ARGV[1]
  for i = 1, math.min(#new, #current) do
    local a, b = string.byte(new, i), string.byte(current, i)
    if a ~= b then
      if a < b then return 0 end
      redis.call('set', KEYS[1], new, 'EX', ARGV[2])
      return 1
    end
  end
  if #new <= #current then return 0 end
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_ONE_DAY_MICROS = 86_400_000_000


class Hold:
    """A held relationship. ``linger`` keeps it locked for a while after the block ends."""

    def __init__(self) -> None:
        self.linger_seconds = 0.0

    def linger(self, seconds: float) -> None:
        """After a call whose fate is unknown (it may still be applied late by the server),
        newer events of the relationship must not overtake it: they wait until it settles."""
        self.linger_seconds = max(self.linger_seconds, seconds)


class Verdict(StrEnum):
    NEW = "new"
    STALE = "stale"
    DUPLICATE = "duplicate"


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
    # Integer arithmetic from a day before year 1 in UTC: exact to the microsecond and never
    # negative, even for year 1 with an offset east of UTC.
    micros = (event.occurred_at - _YEAR_ONE) // timedelta(microseconds=1) + _ONE_DAY_MICROS
    return f"{micros:020d}|{event.event_id}"


class Ledger:
    """``prefix`` keeps deployments (and test runs) that share one Redis apart."""

    def __init__(
        self, client: redis.Redis, prefix: str = KEY_PREFIX, lock_wait_seconds: float = 5.0
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._lock_wait = lock_wait_seconds
        self._release = client.register_script(_RELEASE)
        self._linger = client.register_script(_LINGER)
        self._record = client.register_script(_RECORD)

    @classmethod
    def from_url(cls, url: str, prefix: str = KEY_PREFIX) -> Ledger:
        client = redis.Redis.from_url(
            url, socket_timeout=3, socket_connect_timeout=3, health_check_interval=30
        )
        return cls(client, prefix)

    @contextmanager
    def hold(self, relationship: Relationship) -> Iterator[Hold]:
        """Exclusive use of the relationship; ``RelationshipBusy`` if another holds it too long."""
        key = f"{self._prefix}:lock:{relationship.name}"
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self._lock_wait
        pause = 0.005
        with _translated():
            while not self._redis.set(key, token, nx=True, px=LOCK_TTL_MS):
                if time.monotonic() > deadline:
                    raise RelationshipBusy(f"relationship {relationship.name} is busy")
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        hold = Hold()
        try:
            yield hold
        finally:
            with _translated():
                if hold.linger_seconds > 0:
                    self._linger(keys=[key], args=[token, int(hold.linger_seconds * 1000)])
                else:
                    self._release(keys=[key], args=[token])

    def verdict(self, relationship: Relationship, event: IdentifierChanged) -> Verdict:
        with _translated():
            stored = self._redis.get(f"{self._prefix}:applied:{relationship.name}")
        if stored is None:
            return Verdict.NEW
        current = stored.decode() if isinstance(stored, bytes) else str(stored)
        candidate = order_key(event)
        if candidate == current:
            return Verdict.DUPLICATE
        return Verdict.STALE if candidate < current else Verdict.NEW

    def record(self, relationship: Relationship, event: IdentifierChanged) -> None:
        with _translated():
            self._record(
                keys=[f"{self._prefix}:applied:{relationship.name}"],
                args=[order_key(event), LEDGER_TTL_SECONDS],
            )

    def ping(self) -> bool:
        with _translated():
            return bool(self._redis.ping())


@contextmanager
def _translated() -> Iterator[None]:
    """Redis failures become a transient failure: events wait, nothing is applied blindly."""
    try:
        yield
    except redis.RedisError as exc:
        raise LedgerUnavailable(f"ledger unavailable: {type(exc).__name__}") from None
