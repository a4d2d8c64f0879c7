"""Issue 26, item 3: the lock of a worker whose presence record is gone is taken over at once.

Real Redis (db 15, a key prefix of its own per test); the record's expiry is played by deleting
it, so that no test waits for a TTL.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support import REDIS_URL
from tests.unit.test_ledger import RELATIONSHIP
from worker.exceptions import RelationshipBusy
from worker.processing.ledger import Hold, Ledger
from worker.processing.ledger.presence import Presence
from worker.runtime.caller import Caller

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    yield made
    made.close()


@pytest.fixture
def worker_ledger(ledger_prefix: str, client: redis.Redis) -> Callable[[], Ledger]:
    """Ledgers of workers, each with a presence record of its own, renewed once."""

    def make() -> Ledger:
        presence = Presence(client, prefix=ledger_prefix)
        presence.renew()
        return Ledger(client, prefix=ledger_prefix, presence=presence)

    return make


def _take(ledger: Ledger, event_id: str, *, owned: bool = True) -> Hold | None:
    return ledger.try_acquire_all([(RELATIONSHIP, event_id, None)], owned=owned)[0]


def _held(ledger: Ledger, event_id: str) -> Hold:
    """A relationship taken by ``ledger``'s worker for its lanes."""
    hold = _take(ledger, event_id)
    assert hold is not None
    return hold


def _gone(ledger: Ledger, client: redis.Redis) -> None:
    """The worker of ``ledger`` died: its presence record expired."""
    assert ledger.presence is not None
    assert client.delete(ledger.presence.key_prefix + ledger.presence.owner) == 1


def test_given_a_fenced_lock_whose_owner_is_gone_then_another_worker_takes_it_over(
    worker_ledger: Callable[[], Ledger], client: redis.Redis
) -> None:
    # Given a worker holding a relationship for a call, leased for a minute
    dead, alive = worker_ledger(), worker_ledger()
    held = _held(dead, "evt-1")
    dead.fence(held, lease_seconds=60)
    # Then no other worker takes it while its owner is present
    assert _take(alive, "evt-2") is None
    # When the owner's presence record is gone
    _gone(dead, client)
    # Then another worker takes it over at once, and the owner, were it still there, records
    # nothing and releases nothing
    assert _take(alive, "evt-2") is not None
    assert dead.leave_all([held]) == [False]


def test_given_a_lingering_lock_or_one_naming_no_owner_then_it_is_never_taken_over(
    worker_ledger: Callable[[], Ledger], client: redis.Redis
) -> None:
    # Given a worker's call whose fate is unknown, lingering, and a lock without an owner (a
    # retry's: its call is not cut at the presence deadline)
    dead, alive = worker_ledger(), worker_ledger()
    unsettled = _held(dead, "evt-1")
    unsettled.linger(30)
    assert dead.leave_all([unsettled]) == [True]
    # When the owner's presence record is gone
    _gone(dead, client)
    # Then the linger still holds the relationship
    assert _take(alive, "evt-2") is None
    client.delete(dead.lock_key(RELATIONSHIP))
    assert _take(dead, "evt-3", owned=False) is not None
    assert _take(alive, "evt-2") is None


def test_given_a_lock_lost_to_a_worker_now_gone_then_the_fence_takes_it_back(
    worker_ledger: Callable[[], Ledger], client: redis.Redis
) -> None:
    # Given an event whose lock expired while it waited, and which a worker since gone took
    waiting, dead = worker_ledger(), worker_ledger()
    held = _held(waiting, "evt-1")
    client.delete(waiting.lock_key(RELATIONSHIP))
    assert _take(dead, "evt-2") is not None
    with pytest.raises(RelationshipBusy):
        waiting.fence(held, lease_seconds=60)
    _gone(dead, client)
    # When the event's lane fences it, then it is its own again
    waiting.fence(held, lease_seconds=60)
    assert waiting.leave_all([held]) == [True]


class _HangingApplier:
    """Waits on the API for ever; notes that the call was interrupted."""

    budget = None

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def send_async(self, call: Any, *, connection: Any, fence: Any, budget: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            call.interrupted = True
            raise


class _Call:
    relationship = RELATIONSHIP
    backfill = False
    interrupted = False
    failure: Exception | None = None


def test_given_a_presence_that_lapses_then_the_calls_in_flight_are_cut(
    ledger_prefix: str, client: redis.Redis
) -> None:
    # Given a worker whose presence record, renewed once, may expire a second from now, and a
    # call in flight
    presence = Presence(client, prefix=ledger_prefix, ttl_seconds=2.0)
    presence.renew()
    called: queue.Queue[_Call] = queue.Queue()
    caller = Caller(
        applier=_HangingApplier(Ledger(client, prefix=ledger_prefix, presence=presence)),  # type: ignore[arg-type]
        lanes=1,
        make_connection=lambda: None,  # type: ignore[arg-type, return-value]
        on_called=lambda call, message: called.put(call),  # type: ignore[arg-type]
        on_lost=lambda call, message: pytest.fail("a cut call is not lost"),
    )
    threading.Thread(target=caller.run, args=(lambda: None,), daemon=True).start()
    caller.put(_Call(), object())  # type: ignore[arg-type]
    # When the record may have expired, then the call is cut by then, and concluded as busy
    call = called.get(timeout=10)
    assert time.monotonic() - presence.valid_until < 0.5
    assert call.interrupted
    assert isinstance(call.failure, RelationshipBusy)
    assert "presence" in str(call.failure)
