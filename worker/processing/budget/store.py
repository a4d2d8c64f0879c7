"""``RateBudget``: the fleet's rate budget per tenant, in Redis (see the package's docstring)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.cluster import RedisCluster

from worker.exceptions import LedgerUnavailable, RateLimited
from worker.observability import metrics
from worker.processing.ledger import KEY_PREFIX, REDIS_TIMEOUT_SECONDS, cluster_tag
from worker.processing.ledger.client import RedisClient, redis_client, unavailable_on_failure
from worker.processing.ledger.scripts import run_per_slot, script_text

log = logging.getLogger(__name__)

#: The longest wait for budget a call may reserve: beyond it the event is deferred instead (no
#: attempt spent), so that no call waits on a lock for long, nor a worker on one tenant.
LONGEST_WAIT_SECONDS = 10.0
#: The share of a configured rate the budget spends: calls spaced evenly by Redis's clock arrive
#: bunched (a busy worker, the network), and the API counts them on arrival.
RATE_HEADROOM = 0.9
#: Without a configured rate: how long a learned rate lasts after the tenant's last 429.
LEARNED_RATE_SECONDS = 60.0
#: Without a configured rate: seconds between two reads of the tenants the fleet was refused for.
POLL_SECONDS = 1.0
#: The learned rate after a new pause: this fraction of the rate before it.
RATE_DECREASE = 0.8
#: The learned rate's rise per second of calls without a 429, in calls a second.
RATE_INCREASE_PER_SECOND = 1.0
#: The least rate ever learned, in calls a second.
LEAST_RATE = 1.0
#: Seconds a 429 without ``Retry-After`` pauses its tenant for.
DEFAULT_RETRY_AFTER_SECONDS = 1.0
#: Connections of the budget's Redis pool: the caller's round trips, the retries' threads.
MAX_CONNECTIONS = 40

_MICROSECONDS = 1_000_000


@dataclass(frozen=True)
class Reservation:
    """What one call of a tenant got: ``wait_seconds`` before it may go, if ``reserved``; a wait
    too long to reserve otherwise (the event is to be deferred). A tenant without a rate now
    (none configured, and the one learned expired) gets no wait."""

    wait_seconds: float
    reserved: bool = True

    def refusal(self, tenant: str) -> RateLimited:
        """What defers an event whose call could not reserve its slot: no attempt is spent."""
        return RateLimited(
            f"the API rate budget of tenant {tenant} is spent for the next "
            f"{self.wait_seconds:.1f}s: deferred",
            None,
            retry_after=self.wait_seconds,
        )


class RateBudget:
    """The rate budget of every tenant: ``per_second`` calls a second each, or (None) the rates
    learned from 429s. Thread-safe; ``applies``, ``paused_for``, ``answered`` and
    ``seen_refusal`` do no I/O, the rest one round trip each (``LedgerUnavailable`` when Redis
    does not answer)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        per_second: float | None,
        deployment: str = "/",
        prefix: str = KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``deployment``: the broker's virtual host, as for ``ccsync pause``: the workers of
        one deployment share a budget; two deployments on one Redis (and test runs) do not."""
        if per_second is not None and per_second <= 0:
            raise ValueError("a rate must be positive")
        self._redis = client
        self.per_second = per_second
        self._prefix = prefix
        self._deployment = deployment
        self._clock = clock
        self._reserve = client.register_script(script_text("reserve.lua", package=__package__))
        self._refused = client.register_script(script_text("refused.lua", package=__package__))
        self._limited_key = self._keys("")[0] + ":limited"
        # Without a configured rate, per tenant (lower case): until when its calls reserve
        # their slots, until when they wait for the 429 this worker got, until when the pause
        # this worker reported lasts, and its calls answered in this second and the previous.
        self._limited: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._reported: dict[str, float] = {}
        self._answered: dict[str, tuple[int, int, int]] = {}
        # With a configured rate, per tenant: when this worker's next call may leave.
        self._next_send: dict[str, float] = {}
        self._report_lock = threading.Lock()
        self._next_poll = 0.0
        metrics.API_RATE_LIMIT.set(per_second or 0)

    @classmethod
    def from_url(cls, url: str, *, per_second: float | None, deployment: str) -> RateBudget:
        client = redis_client(url, timeout=REDIS_TIMEOUT_SECONDS, max_connections=MAX_CONNECTIONS)
        return cls(client, per_second=per_second, deployment=deployment)

    def applies(self, tenant: str) -> bool:
        """Whether a call of ``tenant`` must reserve its slot first: always with a configured
        rate; without one, while a rate learned from a 429 lasts."""
        if self.per_second is not None:
            return True
        until = self._limited.get(tenant.lower())
        return until is not None and until > self._clock()

    def paused_for(self, tenant: str) -> float:
        """Seconds the tenant's calls still wait for a 429 this worker got (0: none)."""
        until = self._not_before.get(tenant.lower())
        return 0.0 if until is None else max(0.0, until - self._clock())

    def check_unpaused(self, tenant: str) -> None:
        """Right before a call, after its fence, with no I/O: ``RateLimited`` (the event is
        deferred, no attempt spent) while a 429 this worker got for the tenant holds it; the
        calls that were past their wait when it came are not made."""
        paused = self.paused_for(tenant)
        if paused > 0:
            refused = f"the API refused a call of tenant {tenant} (429): deferred"
            raise RateLimited(refused, None, retry_after=paused)

    def reserve_all(self, tenants: Sequence[str]) -> list[Reservation]:
        """One reservation per call, in one round trip: per call, how long to wait first."""
        keys: list[str] = []
        for tenant in tenants:
            keys += self._keys(tenant)
        args: list[str | int] = [
            f"{(self.per_second or 0) * RATE_HEADROOM:.6f}",
            int(LONGEST_WAIT_SECONDS * _MICROSECONDS),
            f"{RATE_INCREASE_PER_SECOND:.6f}",
        ]
        with unavailable_on_failure():
            if isinstance(self._redis, RedisCluster):
                replies, _ = run_per_slot(self._redis, self._reserve, keys, args, head=len(args))
            else:
                replies = self._reserve(keys=keys, args=args, client=self._redis)
        reservations = []
        for tenant, (reserved, wait) in zip(tenants, replies, strict=True):
            if wait < 0:
                self._limited.pop(tenant.lower(), None)
                reservations.append(Reservation(0.0))
            else:
                reservations.append(Reservation(wait / _MICROSECONDS, reserved=bool(reserved)))
        return reservations

    def spaced(self, tenant: str) -> float:
        """After a call's reserved wait, with no I/O: seconds more before it leaves, so that this
        worker's calls of the tenant leave no closer together than the configured rate allows.
        Calls whose slots a stalled worker overslept would otherwise leave together, and the API
        counts calls as they arrive."""
        if self.per_second is None:
            return 0.0
        now = self._clock()
        key = tenant.lower()
        leaves = max(now, self._next_send.get(key, 0.0))
        self._next_send[key] = leaves + 1 / self.per_second
        return leaves - now

    def wait(self, tenant: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """In this thread, before a call of ``tenant``: waits for its slot. ``RateLimited`` when
        the wait would be longer than ``LONGEST_WAIT_SECONDS`` (nothing reserved)."""
        self.refresh()
        if not self.applies(tenant):
            return
        started = self._clock()
        sleep(self.paused_for(tenant))
        [reservation] = self.reserve_all([tenant])
        if not reservation.reserved:
            raise reservation.refusal(tenant)
        sleep(reservation.wait_seconds)
        sleep(self.spaced(tenant))
        metrics.API_RATE_WAIT_SECONDS.observe(self._clock() - started)

    def answered(self, tenant: str) -> None:
        """A call of ``tenant`` was answered: counted, for the rate learned at its first 429."""
        if self.per_second is not None:
            return
        second = int(self._clock())
        key = tenant.lower()
        at, now, before = self._answered.get(key, (second, 0, 0))
        if at == second:
            self._answered[key] = (second, now + 1, before)
        else:
            self._answered[key] = (second, 1, now if at == second - 1 else 0)

    def seen_refusal(self, tenant: str, retry_after: float | None) -> None:
        """A 429 this worker got: its calls of ``tenant`` wait at once, before Redis is told
        (``refused``)."""
        key = tenant.lower()
        wait = DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
        self._not_before[key] = self._clock() + wait
        if self.per_second is None:
            self._limited[key] = self._clock() + LEARNED_RATE_SECONDS

    def refused(self, tenant: str, retry_after: float | None) -> None:
        """Tells the fleet of a 429 (one round trip; none for the 429s of a pause this worker
        reported already). A failure to tell is logged: this worker holds the tenant anyway."""
        key = tenant.lower()
        wait = DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
        now = self._clock()
        with self._report_lock:
            if self._reported.get(key, 0.0) > now:
                return
            self._reported[key] = now + wait
        self.seen_refusal(tenant, retry_after)
        _, per_second, previous = self._answered.get(key, (0, 0, 0))
        args: list[str | int] = [
            int(wait * _MICROSECONDS),
            f"{self.per_second or 0:.6f}",
            max(per_second, previous),
            f"{RATE_DECREASE:.6f}",
            f"{LEAST_RATE:.6f}",
            int(LEARNED_RATE_SECONDS * 1000),
        ]
        try:
            with unavailable_on_failure():
                learned = self._refused(keys=self._keys(tenant), args=args, client=self._redis)
                if self.per_second is None:
                    expires_ms = int((time.time() + LEARNED_RATE_SECONDS) * 1000)
                    pipeline = self._redis.pipeline(transaction=False)
                    pipeline.zadd(self._limited_key, {key: expires_ms})
                    pipeline.zremrangebyscore(self._limited_key, "-inf", int(time.time() * 1000))
                    pipeline.execute()
        except LedgerUnavailable as exc:
            log.warning("tenant %s: the fleet could not be told of a 429 (%s)", tenant, exc)
            return
        if learned is not None:
            log.warning(
                "tenant %s: the API refused a call (429); its calls are held %.1fs, then paced "
                "at %s calls a second (learned)",
                tenant,
                wait,
                learned.decode() if isinstance(learned, bytes) else learned,
            )

    def refresh(self) -> None:
        """Without a configured rate: learns which tenants the fleet was refused for, at most
        once every ``POLL_SECONDS`` (one round trip). Redis not answering is logged, not
        raised: the worker goes on with what it knows."""
        now = self._clock()
        if self.per_second is not None or now < self._next_poll:
            return
        self._next_poll = now + POLL_SECONDS
        wall_ms = time.time() * 1000
        try:
            with unavailable_on_failure():
                limited: list[tuple[bytes, float]] = self._redis.zrangebyscore(  # type: ignore[assignment]
                    self._limited_key, int(wall_ms), "+inf", withscores=True
                )
        except LedgerUnavailable as exc:
            log.debug("the tenants the fleet was refused for could not be read (%s)", exc)
            return
        for member, expires_ms in limited:
            self._limited[member.decode()] = now + (float(expires_ms) - wall_ms) / 1000

    def _keys(self, tenant: str) -> list[str]:
        """The tenant's keys in this deployment, in one hash slot (the tag comes first: a
        brace in the names cannot move it): when its next call is due, its learned rate."""
        name = f"{self._deployment}|{tenant.lower()}"
        tagged = f"{{{cluster_tag(name)}}}{name}"
        return [f"{self._prefix}:budget:{tagged}", f"{self._prefix}:budget-rate:{tagged}"]
