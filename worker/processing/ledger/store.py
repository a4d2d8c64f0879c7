"""The ledger itself: relationships taken, fenced and left in batched script calls to Redis."""

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
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from worker.exceptions import LedgerUnavailable, RelationshipBusy
from worker.processing.ledger.busy import BusyBackoff
from worker.processing.ledger.client import (
    RedisClient,
    is_cluster_url,
    redis_client,
    unavailable_on_failure,
)
from worker.processing.ledger.holds import LINGER_PREFIX, Hold, LockState
from worker.processing.ledger.presence import Presence, owned_token, presence_key_prefix
from worker.processing.ledger.records import AppliedRecord, parse_record
from worker.processing.ledger.relationships import Relationship, cluster_tag, relationship_named
from worker.processing.ledger.scripts import run_per_slot, script_text
from worker.processing.ledger.status import LedgerStatus, Vitals

#: What every Redis key of the ledger starts with, unless a ``prefix`` of its own is given.
KEY_PREFIX = "ccsync"
#: How long a lock taken ahead of its call lives (``CCSYNC_LOCK_TTL_SECONDS``): it only has to
#: outlast the event's wait for its call, since ``fence`` extends it to cover the call.
LOCK_TTL_MS = 60_000
#: Added to a fenced call's lease: the lease starts when Redis runs the fence, somewhere in its
#: round trip, so a fence whose round trip took longer than this vouches for nothing.
FENCE_MARGIN_SECONDS = 2.0
#: Long enough to outlive any replay an operator would do; bounds Redis memory for dead customers.
LEDGER_TTL_SECONDS = 180 * 24 * 3600
#: Seconds an event waits for a relationship another event holds, before it is concluded as busy.
LOCK_WAIT_SECONDS = 5.0
#: Seconds a Redis connect or command may take before the ledger counts as unreachable.
REDIS_TIMEOUT_SECONDS = 3
#: Seconds after which an idle Redis connection is checked before it is used again.
REDIS_HEALTH_CHECK_SECONDS = 30
#: Milliseconds a write waits for its replicas (Redis WAIT) before it counts as failed; well
#: under ``REDIS_TIMEOUT_SECONDS``, so that the command itself does not time out first.
REPLICA_WAIT_TIMEOUT_MS = 1000
#: Keys asked for per SCAN call when the records are read in full (``Ledger.records``).
SCAN_BATCH = 1000
#: Seconds between two tries to release the locks of acquires whose reply was lost: one round
#: trip each time, until each is released or has expired.
UNANSWERED_RELEASE_SECONDS = 1.0


@dataclass(frozen=True)
class _Unanswered:
    """A lock an acquire may have taken, whose reply never came: only its token can free it."""

    keys: list[str]
    token: str
    expires: float


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
        presence: Presence | None = None,
    ) -> None:
        """``wait_replicas``: replicas each script call must reach (Redis WAIT) before it counts
        as done, else ``LedgerUnavailable``; on a cluster, each primary the call wrote to waits
        for that many of its own. ``connect`` makes each thread's own client (one connection,
        one per node on a cluster); without it, a copy of ``client``'s pool limited to one
        connection (a cluster's ``client`` is shared as it is). ``presence``: this worker's
        presence record, whose owner id the locks taken ``owned`` carry (``try_acquire_all``).

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
        self.presence = presence
        # A lock whose owner's presence is gone is taken over; not on a cluster, where the
        # presence records lie in other hash slots than the locks.
        self._presence_prefix = "" if self._cluster else presence_key_prefix(prefix)
        presence_lua = script_text("presence.lua")
        self._acquire = client.register_script(presence_lua + script_text("acquire.lua"))
        self._leave = client.register_script(script_text("leave.lua"))
        self._fence = client.register_script(presence_lua + script_text("fence.lua"))
        self._local = threading.local()
        self._unanswered: list[_Unanswered] = []
        self._unanswered_lock = threading.Lock()
        self._unanswered_next_try = 0.0
        self._vitals = Vitals()
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
        presence: bool = False,
    ) -> Ledger:
        """A ledger on the Redis ``url`` names: one server, or Sentinel's primary
        (``worker.processing.ledger.client``); with ``presence``, a worker's, with its presence
        record (none on a cluster, where no lock is taken over)."""
        connect = functools.partial(
            redis_client,
            url,
            timeout=REDIS_TIMEOUT_SECONDS,
            health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
        )
        own = functools.partial(connect, max_connections=1)
        return cls(
            connect(),
            prefix=prefix,
            lock_ttl_seconds=lock_ttl_seconds,
            wait_replicas=wait_replicas,
            connect=own,
            presence=Presence(own(), prefix=prefix)
            if presence and not is_cluster_url(url)
            else None,
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

    @property
    def status(self) -> LedgerStatus:
        """Whether Redis answers in time, late (slow) or not at all, and since when: what a
        liveness probe reads (``LedgerStatus.healthy``)."""
        return self._vitals.status

    def try_acquire_all(
        self, wanted: Sequence[tuple[Relationship, str, str | None]], *, owned: bool = False
    ) -> list[Hold | None]:
        """Tries to take each relationship for its event (id), all in one round trip: a hold for
        each one taken, None for each one held by another event. The third item of each is the
        token of a lock the event may take over as its own (``Attempt.inherited_lock``).

        ``owned``: the calls of these holds end by ``presence.valid_until`` (the caller's lanes
        cut them): their locks name this worker's presence, and may be taken over once its
        record is gone. Other locks expire with their leases.

        When the reply does not come (``LedgerUnavailable``), the script may still have run and
        taken locks under tokens nobody holds: a later call releases them by those tokens."""
        self._release_unanswered()
        keys: list[str] = []
        args: list[str | int] = [self._lock_ttl_ms, self._presence_prefix]
        for relationship, event_id, inherited in wanted:
            token = secrets.token_hex(16)
            if owned and self.presence is not None:
                token = owned_token(self.presence.owner, token)
            # Without an event id no later hold can claim the linger as its own.
            args += [token, f"{LINGER_PREFIX}{event_id or token}", inherited or ""]
            keys += [self.lock_key(relationship), self.applied_key(relationship)]
        try:
            replies = self._run(self._acquire, keys, args, head=2)
        except LedgerUnavailable:
            self._unanswered_acquire(keys, args)
            raise
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
                    token=str(args[3 * i + 2]),
                    linger_value=str(args[3 * i + 3]),
                    stored=stored,
                    lingering_until=now + max(0, int(lingering_ms)) / 1000,
                )
            )
        return holds

    def _unanswered_acquire(self, keys: list[str], args: list[str | int]) -> None:
        expires = time.monotonic() + self._lock_ttl_ms / 1000
        lost = [
            _Unanswered(keys[2 * i : 2 * i + 2], str(args[3 * i + 2]), expires)
            for i in range(len(keys) // 2)
        ]
        with self._unanswered_lock:
            self._unanswered += lost

    def _release_unanswered(self) -> None:
        """Releases, by their tokens, the locks acquires without a reply may have taken: at
        most one round trip every ``UNANSWERED_RELEASE_SECONDS``, none when there are none.
        A lock not found is looked for again (its acquire may still be on its way) until it
        would have expired. ``LedgerUnavailable`` if Redis does not answer."""
        now = time.monotonic()
        if not self._unanswered or now < self._unanswered_next_try:
            return
        with self._unanswered_lock:
            self._unanswered_next_try = now + UNANSWERED_RELEASE_SECONDS
            lost = [entry for entry in self._unanswered if entry.expires > now]
            self._unanswered = []
        if not lost:
            return
        keys: list[str] = [key for entry in lost for key in entry.keys]
        args: list[str | int] = [LEDGER_TTL_SECONDS]
        for entry in lost:
            # Left without a record and without a linger: the lock is deleted if still its own.
            args += [entry.token, "", 0, ""]
        try:
            released = self._run(self._leave, keys, args, head=1)
        except LedgerUnavailable:
            # Redis still does not answer: the acquire after this would not get through either.
            with self._unanswered_lock:
                self._unanswered += lost
            raise
        with self._unanswered_lock:
            self._unanswered += [e for e, done in zip(lost, released, strict=True) if not done]

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

    def records(
        self, *, customer_id: str | None = None, batch: int = SCAN_BATCH
    ) -> Iterator[tuple[Relationship, AppliedRecord]]:
        """Every relationship with a record (of ``customer_id`` only, if given), and its record,
        by SCAN (never KEYS: Redis keeps serving the workers meanwhile) and a pipeline of GETs
        per batch (``_scan``)."""
        for relationship, raw, _ in self._scan("applied", customer_id=customer_id, batch=batch):
            yield relationship, parse_record(raw)

    def locks(
        self, *, customer_id: str | None = None, batch: int = SCAN_BATCH
    ) -> Iterator[tuple[Relationship, LockState]]:
        """Every relationship whose lock is held now (of ``customer_id`` only, if given): by an
        event being applied, or lingering for one. Read as ``records`` reads, changing nothing."""
        scanned = self._scan("lock", customer_id=customer_id, batch=batch, with_ttl=True)
        for relationship, raw, ttl_ms in scanned:
            holder = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            yield relationship, LockState(holder, max(0, ttl_ms) / 1000)

    def _scan(
        self, kind: str, *, customer_id: str | None, batch: int, with_ttl: bool = False
    ) -> Iterator[tuple[Relationship, Any, int]]:
        """The keys of ``kind`` (``applied``, ``lock``), each with its relationship, its value
        and (``with_ttl``) its time to live in ms, else 0; keys gone meanwhile are left out.

        SCAN returns every key that exists for the whole scan at least once; one it returns twice
        (while Redis resizes its table) is given once. Keys written during the scan may or may not
        be given. Memory: a 16-byte digest per key given.
        """
        # What ``applied_key`` and ``lock_key`` put before the relationship's name.
        prefix = f"{self._prefix}:{kind}:"
        pattern = _glob_escape(prefix) + "*"
        if customer_id is not None:
            # The customer is the name's second part from the end, whatever the tenant holds.
            pattern += f"|{_glob_escape(customer_id)}|*"
        seen: set[bytes] = set()
        connection = self._connection()
        # On a cluster, redis-py's scan_iter scans every primary in turn, each to its cursor's end.
        keys = connection.scan_iter(match=pattern, count=batch)
        per_key = 2 if with_ttl else 1
        while True:
            with self._round_trip():
                chunk = list(itertools.islice(keys, batch))
                fresh = [key for key in chunk if _digest(key) not in seen]
                pipeline = connection.pipeline(transaction=False)
                for key in fresh:
                    pipeline.get(key)
                    if with_ttl:
                        pipeline.pttl(key)
                replies = pipeline.execute() if fresh else []
            for i, key in enumerate(fresh):
                seen.add(_digest(key))
                raw = replies[per_key * i]
                ttl_ms = int(replies[per_key * i + 1]) if with_ttl else 0
                name = (key.decode() if isinstance(key, bytes) else key).removeprefix(prefix)
                if self._cluster:
                    # The hash tag: hex digits in braces, never a brace within.
                    name = name.partition("}")[2] if name.startswith("{") else ""
                relationship = relationship_named(name)
                if raw is None or relationship is None:
                    continue
                if customer_id is None or relationship.customer_id == customer_id:
                    yield relationship, raw, ttl_ms
            if not chunk:
                return

    def acquire(
        self, relationship: Relationship, event_id: str = "", inherited_lock: str | None = None
    ) -> Hold:
        """Exclusive use of the relationship by one event until it leaves; ``RelationshipBusy``
        if another holds it longer than the lock wait."""
        deadline = time.monotonic() + self._lock_wait
        backoff = BusyBackoff()
        wanted = [(relationship, event_id, inherited_lock)]
        while (hold := self.try_acquire_all(wanted)[0]) is None:
            if time.monotonic() > deadline:
                raise RelationshipBusy(f"relationship {relationship.name} is busy")
            time.sleep(backoff.next_pause())
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
        args: list[str | int] = [self._presence_prefix]
        for hold in holds:
            keys += hold.keys
            args += [hold.token, lease_ms]
        replies = self._run(self._fence, keys, args, head=1)
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
        """One batched call of ``script`` (``worker.processing.ledger.scripts``): its reply,
        one item per relationship in their order."""
        with self._round_trip():
            connection = self._connection()
            if isinstance(connection, RedisCluster):
                replies, nodes = run_per_slot(connection, script, keys, args, head=head)
                if self._wait_replicas:
                    for node in nodes:
                        self._replicated(connection, target_nodes=node)
                return replies
            # redis-py loads the script again if Redis restarted and forgot it.
            reply = script(keys=keys, args=args, client=connection)
            if self._wait_replicas:
                self._replicated(connection)
            return reply

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
        """A call to Redis, translated, that also tells ``reachable`` and ``status`` how it
        went."""
        started = time.monotonic()
        try:
            with unavailable_on_failure():
                yield
        except LedgerUnavailable:
            self.reachable = False
            self._vitals.failed()
            raise
        self.reachable = True
        self._vitals.answered(time.monotonic() - started)

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


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _digest(key: bytes | str) -> bytes:
    return hashlib.blake2b(key.encode() if isinstance(key, str) else key, digest_size=16).digest()
