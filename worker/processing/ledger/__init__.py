"""What was applied per relationship, in Redis: the newest event wins, duplicates are absorbed.

A relationship is (tenant, customer, reseller-or-own). For each, Redis keeps the order key
``(occurredAt, eventId)`` of the last event applied, and a lock that serialises its events across
every thread, process and machine, so that two workers never race two events of one customer to
CloudCockpit. Ordering is by ``occurredAt`` as UTC microseconds, ties broken by ``eventId``.

Each event runs up to three Lua scripts: taking the lock returns what was applied; right before
its call, fencing checks that the lock is still the event's and extends it to cover the whole
call; leaving records the event (when it was applied) and releases the lock. Taking and leaving
handle many events at once: the worker takes, and later leaves, the relationships of every event
waiting in one script call.

On a Redis Cluster (``redis+cluster://``) a script may only touch keys of one hash slot. Each
relationship's two keys share a slot through a hash tag, a digest of its name (``cluster_tag``):
``{prefix}:lock:{<tag>}<name>``. A batch is cut into one script call per slot, and those calls go
out in one pipeline (one round trip to each primary holding some of them). On one server or
Sentinel the keys keep their form, ``{prefix}:lock:<name>``, so existing ledgers need nothing.

The package, by concern: ``relationships`` (what is keyed and in which order events come),
``records`` (what is stored per relationship), ``holds`` (a relationship held by one event, and a
lock as read), ``busy`` (backing off a relationship another event holds), ``scripts`` (the Lua
scripts and their run per hash slot), ``status`` (whether Redis answers in time), ``client``
(Redis clients from a URL) and ``store`` (the ``Ledger``). Everything is imported from the
package itself.
"""

from __future__ import annotations

from worker.processing.ledger.busy import (
    BUSY_FIRST_PAUSE_SECONDS,
    BUSY_LONGEST_PAUSE_SECONDS,
    BusyBackoff,
)
from worker.processing.ledger.holds import LINGER_PREFIX, Hold, LockState, Verdict
from worker.processing.ledger.relationships import (
    CLUSTER_TAG_BYTES,
    Relationship,
    cluster_tag,
    order_key,
    order_key_at,
    relationship_named,
)
from worker.processing.ledger.status import (
    SLOW_ROUND_TRIP_SECONDS,
    SLOW_SPELL_SECONDS,
    UNHEALTHY_AFTER_SECONDS,
    LedgerState,
    LedgerStatus,
)
from worker.processing.ledger.store import (
    FENCE_MARGIN_SECONDS,
    KEY_PREFIX,
    LEDGER_TTL_SECONDS,
    LOCK_TTL_MS,
    LOCK_WAIT_SECONDS,
    REDIS_HEALTH_CHECK_SECONDS,
    REDIS_TIMEOUT_SECONDS,
    REPLICA_WAIT_TIMEOUT_MS,
    SCAN_BATCH,
    UNANSWERED_RELEASE_SECONDS,
    Ledger,
)

__all__ = [
    "BUSY_FIRST_PAUSE_SECONDS",
    "BUSY_LONGEST_PAUSE_SECONDS",
    "CLUSTER_TAG_BYTES",
    "FENCE_MARGIN_SECONDS",
    "KEY_PREFIX",
    "LEDGER_TTL_SECONDS",
    "LINGER_PREFIX",
    "LOCK_TTL_MS",
    "LOCK_WAIT_SECONDS",
    "REDIS_HEALTH_CHECK_SECONDS",
    "REDIS_TIMEOUT_SECONDS",
    "REPLICA_WAIT_TIMEOUT_MS",
    "SCAN_BATCH",
    "SLOW_ROUND_TRIP_SECONDS",
    "SLOW_SPELL_SECONDS",
    "UNANSWERED_RELEASE_SECONDS",
    "UNHEALTHY_AFTER_SECONDS",
    "BusyBackoff",
    "Hold",
    "Ledger",
    "LedgerState",
    "LedgerStatus",
    "LockState",
    "Relationship",
    "Verdict",
    "cluster_tag",
    "order_key",
    "order_key_at",
    "relationship_named",
]
