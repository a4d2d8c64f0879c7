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
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException

from worker.events import IdentifierChanged
from worker.exceptions import LedgerUnavailable, RelationshipBusy
from worker.processing.ledger.client import RedisClient, redis_client
from worker.processing.ledger.records import (
    AppliedRecord,
    format_record,
    parse_record,
    record_order_key,
)

#: What every Redis key of the ledger starts with, unless a ``prefix`` of its own is given.
KEY_PREFIX = "ccsync"
#: How long a lock taken ahead of its call lives (``CCSYNC_LOCK_TTL_SECONDS``): it only has to
#: outlast the event's wait for a pool thread, since ``fence`` extends it to cover the call.
LOCK_TTL_MS = 60_000
#: Added to a fenced call's lease: the lease starts when Redis runs the fence, somewhere in its
#: round trip, so a fence whose round trip took longer than this vouches for nothing.
FENCE_MARGIN_SECONDS = 2.0
#: Long enough to outlive any replay an operator would do; bounds Redis memory for dead customers.
LEDGER_TTL_SECONDS = 180 * 24 * 3600
LINGER_PREFIX = "linger:"
#: First pause before a relationship another event holds is tried again; it doubles each time.
BUSY_FIRST_PAUSE_SECONDS = 0.005
#: Longest pause between two tries of a busy relationship, until the lock wait is over.
BUSY_LONGEST_PAUSE_SECONDS = 0.2
#: Seconds an event waits for a relationship another event holds, before it is concluded as busy.
LOCK_WAIT_SECONDS = 5.0
#: Seconds a Redis connect or command may take before the ledger counts as unreachable.
REDIS_TIMEOUT_SECONDS = 3
#: Seconds after which an idle Redis connection is checked before it is used again.
REDIS_HEALTH_CHECK_SECONDS = 30
#: Milliseconds a write waits for its replicas (Redis WAIT) before it counts as failed; well
#: under ``REDIS_TIMEOUT_SECONDS``, so that the command itself does not time out first.
REPLICA_WAIT_TIMEOUT_MS = 1000
#: Bytes of the name's digest that make a relationship's hash tag on a cluster: 8 hex digits
#: spread relationships over all 16,384 slots; which ones share a slot does not matter.
CLUSTER_TAG_BYTES = 4
#: Keys asked for per SCAN call when the records are read in full (``Ledger.records``).
SCAN_BATCH = 1000


_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_ONE_DAY_MICROS = 86_400_000_000


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


class Ledger:
    """``prefix`` keeps deployments (and test runs) that share one Redis apart.

    Each thread talks to Redis over a connection of its own, so that no thread queues on
    redis-py's pool lock.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = KEY_PREFIX,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
        lock_ttl_seconds: float | None = None,
        wait_replicas: int = 0,
        connect: Callable[[], RedisClient] | None = None,
    ) -> None:
        """``wait_replicas``: replicas each script call must reach (Redis WAIT) before it counts
        as done, else ``LedgerUnavailable``; on a cluster, each primary the call wrote to waits
        for that many of its own. ``connect`` makes each thread's own client (one connection,
        one per node on a cluster); without it, a copy of ``client``'s pool limited to one
        connection (a cluster's ``client`` is shared as it is).

        On a cluster the keys carry a hash tag after the prefix, so ``prefix`` must hold no
        brace (ValueError)."""
        self._cluster = isinstance(client, RedisCluster)
        if self._cluster and ("{" in prefix or "}" in prefix):
            raise ValueError("a ledger on a Redis Cluster needs a key prefix without braces")
        self._redis = client
        self._wait_replicas = wait_replicas
        self._connect = connect
        self._prefix = prefix
        self._lock_wait = lock_wait_seconds
        # Read at construction, not definition: tests shorten the module's default.
        ttl_ms = LOCK_TTL_MS if lock_ttl_seconds is None else int(lock_ttl_seconds * 1000)
        self._lock_ttl_ms = max(1, ttl_ms)
        self._acquire = client.register_script(_script("acquire.lua"))
        self._leave = client.register_script(_script("leave.lua"))
        self._fence = client.register_script(_script("fence.lua"))
        self._local = threading.local()
        # Whether the last round trip, from any thread, got through.
        self.reachable = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        lock_ttl_seconds: float | None = None,
        wait_replicas: int = 0,
    ) -> Ledger:
        """A ledger on the Redis ``url`` names: one server, or Sentinel's primary
        (``worker.processing.ledger.client``)."""
        connect = functools.partial(
            redis_client,
            url,
            timeout=REDIS_TIMEOUT_SECONDS,
            health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
        )
        return cls(
            connect(),
            prefix=prefix,
            lock_ttl_seconds=lock_ttl_seconds,
            wait_replicas=wait_replicas,
            connect=functools.partial(connect, max_connections=1),
        )

    def _connection(self) -> RedisClient:
        connection: RedisClient | None = getattr(self._local, "connection", None)
        if connection is None and self._connect is not None:
            connection = self._local.connection = self._connect()
        if connection is not None:
            return connection
        if isinstance(self._redis, RedisCluster):
            # Thread-safe already: a pool per node.
            connection = self._local.connection = self._redis
        else:
            pool = self._redis.connection_pool
            # A pool of the thread's own, uncontended.
            connection = redis.Redis(
                connection_pool=pool.__class__(
                    connection_class=pool.connection_class,
                    max_connections=1,
                    **pool.connection_kwargs,
                )
            )
            self._local.connection = connection
        return connection

    @property
    def lock_wait_seconds(self) -> float:
        return self._lock_wait

    def try_acquire_all(
        self, wanted: Sequence[tuple[Relationship, str, str | None]]
    ) -> list[Hold | None]:
        """Tries to take each relationship for its event (id), all in one round trip: a hold for
        each one taken, None for each one held by another event. The third item of each is the
        token of a lock the event may take over as its own (``Attempt.inherited_lock``)."""
        keys: list[str] = []
        args: list[str | int] = [self._lock_ttl_ms]
        for relationship, event_id, inherited in wanted:
            token = secrets.token_hex(16)
            # Without an event id no later hold can claim the linger as its own.
            args += [token, f"{LINGER_PREFIX}{event_id or token}", inherited or ""]
            keys += [self.lock_key(relationship), self.applied_key(relationship)]
        replies = self._run(self._acquire, keys, args, head=1)
        now = time.monotonic()
        holds: list[Hold | None] = []
        for i, reply in enumerate(replies):
            if not reply:
                holds.append(None)
                continue
            lingering_ms, stored = reply
            holds.append(
                Hold(
                    keys[2 * i : 2 * i + 2],
                    token=str(args[3 * i + 1]),
                    linger_value=str(args[3 * i + 2]),
                    stored=stored,
                    lingering_until=now + max(0, int(lingering_ms)) / 1000,
                )
            )
        return holds

    def lock_key(self, relationship: Relationship) -> str:
        return f"{self._prefix}:lock:{self._key_name(relationship)}"

    def applied_key(self, relationship: Relationship) -> str:
        """Where the relationship's record lives: ``records`` finds every one by this form."""
        return f"{self._prefix}:applied:{self._key_name(relationship)}"

    def _key_name(self, relationship: Relationship) -> str:
        """The relationship's part of its keys: its name, after its hash tag on a cluster."""
        name = relationship.name
        return f"{{{cluster_tag(name)}}}{name}" if self._cluster else name

    def read(self, relationship: Relationship) -> AppliedRecord | None:
        """The relationship's record, None if nothing was applied (or it expired)."""
        with self._round_trip():
            raw = self._connection().get(self.applied_key(relationship))
        return None if raw is None else parse_record(raw)

    def records(self, *, batch: int = SCAN_BATCH) -> Iterator[tuple[Relationship, AppliedRecord]]:
        """Every relationship with a record, and its record, by SCAN (never KEYS: Redis keeps
        serving the workers meanwhile) and a pipeline of GETs per batch.

        SCAN returns every key that exists for the whole scan at least once; one it returns twice
        (while Redis resizes its table) is given once. Keys written during the scan may or may not
        be given. Memory: a 16-byte digest per key given.
        """
        # What ``applied_key`` puts before the relationship's name.
        prefix = f"{self._prefix}:applied:"
        pattern = _glob_escape(prefix) + "*"
        seen: set[bytes] = set()
        connection = self._connection()
        # On a cluster, redis-py's scan_iter scans every primary in turn, each to its cursor's end.
        keys = connection.scan_iter(match=pattern, count=batch)
        while True:
            with self._round_trip():
                chunk = list(itertools.islice(keys, batch))
                fresh = [key for key in chunk if _digest(key) not in seen]
                pipeline = connection.pipeline(transaction=False)
                for key in fresh:
                    pipeline.get(key)
                values = pipeline.execute() if fresh else []
            for key, raw in zip(fresh, values, strict=True):
                seen.add(_digest(key))
                name = (key.decode() if isinstance(key, bytes) else key).removeprefix(prefix)
                if self._cluster:
                    # The hash tag: hex digits in braces, never a brace within.
                    name = name.partition("}")[2] if name.startswith("{") else ""
                relationship = relationship_named(name)
                if raw is not None and relationship is not None:
                    yield relationship, parse_record(raw)
            if not chunk:
                return

    def acquire(
        self, relationship: Relationship, event_id: str = "", inherited_lock: str | None = None
    ) -> Hold:
        """Exclusive use of the relationship by one event until it leaves; ``RelationshipBusy``
        if another holds it longer than the lock wait."""
        deadline = time.monotonic() + self._lock_wait
        pause = BUSY_FIRST_PAUSE_SECONDS
        wanted = [(relationship, event_id, inherited_lock)]
        while (hold := self.try_acquire_all(wanted)[0]) is None:
            if time.monotonic() > deadline:
                raise RelationshipBusy(f"relationship {relationship.name} is busy")
            time.sleep(pause)
            pause = min(pause * 2, BUSY_LONGEST_PAUSE_SECONDS)
        return hold

    def fence(self, hold: Hold, *, lease_seconds: float) -> None:
        """Right before a call: vouches that ``hold`` still has its relationship (or takes it anew
        if its lock expired and nobody took it) and keeps it for ``lease_seconds`` (the longest
        the call can last), and refreshes ``hold.stored`` with what was applied meanwhile, which
        ``Hold.verdict`` then judges by.

        Raises ``RelationshipBusy`` when the call must not be made: the lock expired while the
        event waited and another event took it (and may be calling), or Redis answered too late
        for the lease to surely cover the call. ``LedgerUnavailable`` if Redis cannot say.
        """
        refused = self.fence_all([hold], lease_seconds=lease_seconds)[0]
        if refused is not None:
            raise refused

    def fence_all(
        self, holds: Sequence[Hold], *, lease_seconds: float
    ) -> list[RelationshipBusy | None]:
        """``fence`` for many holds in one round trip, each right before its call: per hold, None
        when its call may be made, else why not. ``LedgerUnavailable`` (for all) if Redis cannot
        say."""
        if not holds:
            return []
        asked = time.monotonic()
        lease_ms = int((lease_seconds + FENCE_MARGIN_SECONDS) * 1000)
        keys: list[str] = []
        args: list[str | int] = []
        for hold in holds:
            keys += hold.keys
            args += [hold.token, lease_ms]
        replies = self._run(self._fence, keys, args, head=0)
        late = time.monotonic() - asked > FENCE_MARGIN_SECONDS
        refusals: list[RelationshipBusy | None] = []
        for hold, reply in zip(holds, replies, strict=True):
            name = hold.keys[0].removeprefix(f"{self._prefix}:lock:")
            if self._cluster:
                name = name.partition("}")[2]
            if not reply:
                refusals.append(RelationshipBusy(f"relationship {name} was lost before the call"))
                continue
            hold.refresh(reply[1])
            refusals.append(
                RelationshipBusy(f"relationship {name}: the ledger answered too late to call")
                if late
                else None
            )
        return refusals

    def leave_all(self, holds: Sequence[Hold]) -> list[bool]:
        """Records what each hold applied (if newer than the stored event) and releases it, all
        in one round trip; all fail together if Redis cannot be reached.

        Returns, per hold, whether its lock was still its own. A hold whose lock was not (it
        expired, and another event may have taken it) records nothing and releases nothing: an
        event it applied must be sent again, so that the newest value is the last to land.
        """
        if not holds:
            return []
        keys: list[str] = []
        args: list[str | int] = [LEDGER_TTL_SECONDS]
        for hold in holds:
            keys += hold.keys
            args += hold.leave_args()
        return [bool(kept) for kept in self._run(self._leave, keys, args, head=1)]

    def _run(self, script: Script, keys: list[str], args: list[str | int], *, head: int) -> Any:
        """One batched call of ``script``: two keys per relationship (lock, applied) and, after
        ``head`` arguments for all, the same number of arguments for each; its reply, one item
        per relationship in their order."""
        with self._round_trip():
            connection = self._connection()
            if isinstance(connection, RedisCluster):
                return self._run_per_slot(connection, script, keys, args, head=head)
            # redis-py loads the script again if Redis restarted and forgot it.
            reply = script(keys=keys, args=args, client=connection)
            if self._wait_replicas:
                self._replicated(connection)
            return reply

    def _run_per_slot(
        self,
        cluster: RedisCluster,
        script: Script,
        keys: list[str],
        args: list[str | int],
        *,
        head: int,
    ) -> list[Any]:
        """``_run`` on a cluster: one script call per hash slot, each with its relationships' keys
        and arguments, all sent in one pipeline; the replies put back in the batch's order."""
        count = len(keys) // 2
        width = (len(args) - head) // count if count else 0
        groups: dict[int, list[int]] = {}
        for i in range(count):
            slot = cluster.keyslot(keys[2 * i])  # type: ignore[no-untyped-call]
            groups.setdefault(slot, []).append(i)
        calls = list(groups.values())
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        # A primary that restarted (or was promoted) has forgotten the script: load it on every
        # primary and run again only the calls it refused, which did nothing.
        for loaded in (False, True):
            pipeline = cluster.pipeline(transaction=False)  # type: ignore[no-untyped-call]
            for c in pending:
                members = calls[c]
                call_keys = [key for i in members for key in keys[2 * i : 2 * i + 2]]
                call_args = args[:head] + [
                    arg for i in members for arg in args[head + width * i : head + width * (i + 1)]
                ]
                # redis-py blocks its pipeline's evalsha(), not the command. The call is sent to
                # its slot's primary as the client knows it: left to find the keys itself, the
                # pipeline would ask the server (COMMAND GETKEYS) for every call.
                node = cluster.get_node_from_key(call_keys[0])  # type: ignore[no-untyped-call]
                pipeline.execute_command(
                    "EVALSHA",
                    script.sha,
                    len(call_keys),
                    *call_keys,
                    *call_args,
                    target_nodes=node,
                )
            for c, reply in zip(pending, pipeline.execute(raise_on_error=False), strict=True):
                results[c] = reply
            pending = [c for c in pending if isinstance(results[c], NoScriptError)]
            if not pending or loaded:
                break
            cluster.script_load(script.script)
        for reply in results:
            if isinstance(reply, Exception):
                raise reply
        if self._wait_replicas:
            nodes = {
                cluster.get_node_from_key(keys[2 * members[0]])  # type: ignore[no-untyped-call]
                for members in calls
            }
            for node in nodes:
                self._replicated(cluster, target_nodes=node)
        replies: list[Any] = [None] * count
        for members, reply in zip(calls, results, strict=True):
            for i, item in zip(members, reply, strict=True):
                replies[i] = item
        return replies

    def _replicated(self, connection: RedisClient, **target: Any) -> None:
        """Waits until ``wait_replicas`` replicas have every write of ``connection`` so far: a
        write only the primary holds is lost if Sentinel promotes a replica that missed it.
        ``LedgerUnavailable`` when too few confirm in time: the caller treats the write as failed
        (the event is tried again; what it recorded may still stand)."""
        # WAIT counts this connection's writes; on a cluster, ``target`` names the node (the
        # thread's client keeps one connection to it, the one that wrote).
        acknowledged = int(connection.wait(self._wait_replicas, REPLICA_WAIT_TIMEOUT_MS, **target))
        if acknowledged < self._wait_replicas:
            raise LedgerUnavailable(
                f"ledger unavailable: a write reached {acknowledged} of "
                f"{self._wait_replicas} replicas in time"
            )

    @contextmanager
    def _round_trip(self) -> Iterator[None]:
        """A call to Redis, translated, that also tells ``reachable`` how it went."""
        try:
            with _translated():
                yield
        except LedgerUnavailable:
            self.reachable = False
            raise
        self.reachable = True

    @contextmanager
    def hold(self, relationship: Relationship, event_id: str = "") -> Iterator[Hold]:
        """``acquire`` and, whatever happens inside, ``leave``."""
        hold = self.acquire(relationship, event_id)
        try:
            yield hold
        finally:
            self.leave_all([hold])

    def ping(self) -> bool:
        """The outage probe's question; an answer also clears ``reachable``, so calls held while
        Redis was away go out without waiting for the next batch to reach it."""
        with self._round_trip():
            return bool(self._redis.ping())


@contextmanager
def _translated() -> Iterator[None]:
    """Redis failures become a transient failure: events wait, nothing is applied blindly."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as exc:
        raise LedgerUnavailable(f"ledger unavailable: {type(exc).__name__}") from None


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


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _digest(key: bytes | str) -> bytes:
    return hashlib.blake2b(key.encode() if isinstance(key, str) else key, digest_size=16).digest()


def _script(name: str) -> str:
    """A Lua script shipped beside this module (acquire.lua, leave.lua)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
