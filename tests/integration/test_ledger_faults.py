"""Issue 25, item 7: the ledger under a Redis of the test's own that answers late or not at all.

The faults are real: ``CLIENT PAUSE`` holds every command the server has received, so a script
sent meanwhile runs when the pause ends, after the worker's socket timeout gave up on its reply.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.integration.redis_process import RedisProcess
from tests.integration.reply_proxy import ReplyProxy
from tests.integration.waiting import wait_until
from worker.exceptions import LedgerUnavailable
from worker.processing.ledger import (
    SLOW_SPELL_SECONDS,
    UNHEALTHY_AFTER_SECONDS,
    Ledger,
    LedgerState,
    Relationship,
)
from worker.processing.ledger.client import redis_client

pytestmark = pytest.mark.timeout(90)

#: The ledger's socket timeout in these tests: short, so that a pause outlasts every retry.
TIMEOUT_SECONDS = 0.5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path) as started:
        yield started


@pytest.fixture
def admin(server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, socket_timeout=30)
    yield client
    client.close()


def _ledger(server: RedisProcess, *, timeout: float = TIMEOUT_SECONDS) -> Ledger:
    return _ledger_at(server.url, timeout=timeout)


def _ledger_at(url: str, *, timeout: float = TIMEOUT_SECONDS) -> Ledger:
    return Ledger(redis_client(url, timeout=timeout), prefix="faults", lock_wait_seconds=5)


def _relationship() -> Relationship:
    return Relationship("faults.example", str(uuid.uuid4()), None)


def _warmed_up(ledger: Ledger) -> Ledger:
    """``ledger`` once Redis knows its scripts: a call whose reply is lost has then run."""
    with ledger.hold(_relationship()):
        pass
    return ledger


@pytest.fixture
def proxy(server: RedisProcess) -> Iterator[ReplyProxy]:
    with ReplyProxy(server.port) as started:
        yield started


def test_given_an_acquire_whose_reply_was_lost_then_its_lock_does_not_stay_for_its_ttl(
    server: RedisProcess, admin: redis.Redis, proxy: ReplyProxy
) -> None:
    ledger = _warmed_up(_ledger_at(f"redis://127.0.0.1:{proxy.port}/0"))
    relationship = _relationship()
    # Given Redis whose replies are lost on the way back while the relationship is taken: the
    # script runs (the lock is there, under a token the worker never saw in a reply)
    proxy.hold()
    with pytest.raises(LedgerUnavailable):
        ledger.try_acquire_all([(relationship, "evt-lost", None)])
    assert admin.exists(ledger.lock_key(relationship))
    proxy.release()

    # When the worker takes the relationship again for the customer's next event
    started = time.monotonic()
    hold = ledger.acquire(relationship, "evt-next")

    # Then it gets it at once, not after the lock's TTL (60 s) or the lock wait (5 s)
    took = time.monotonic() - started
    assert took < 3, f"the lost acquire's lock held the relationship for {took:.1f}s"
    assert ledger.leave_all([hold]) == [True]


def test_given_a_retried_acquire_whose_first_try_ran_then_it_takes_its_own_lock(
    server: RedisProcess, admin: redis.Redis, proxy: ReplyProxy
) -> None:
    # Given a client that tries a command again after a timeout (redis-py's retry), and replies
    # lost for a little longer than one timeout: the first try ran, the retry comes after it
    ledger = _warmed_up(
        Ledger(
            redis_client(
                f"redis://127.0.0.1:{proxy.port}/0",
                timeout=TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), retries=3, supported_errors=(redis.TimeoutError,)),
            ),
            prefix="faults",
        )
    )
    relationship = _relationship()
    proxy.hold()
    threading.Timer(TIMEOUT_SECONDS * 1.5, proxy.release).start()

    # When the relationship is taken
    [hold] = ledger.try_acquire_all([(relationship, "evt-1", None)])

    # Then the retry found the lock its own first try took, and holds it
    assert hold is not None, "the acquire's retry found its own first try's lock busy"
    assert admin.get(ledger.lock_key(relationship)) == hold.token.encode()
    assert ledger.leave_all([hold]) == [True]


def test_given_redis_answering_2s_late_then_the_ledger_says_it_is_slow_and_since_when(
    proxy: ReplyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.processing.ledger")
    ledger = _warmed_up(_ledger_at(f"redis://127.0.0.1:{proxy.port}/0", timeout=3))
    relationship = _relationship()
    assert ledger.status.state is LedgerState.OK
    # Given Redis answering every command 2 s late (within the ledger's 3 s timeout)
    proxy.reply_delay_seconds = 2.0
    began = time.time()

    # When an event is taken and fenced: its call is refused, the fence came back too late
    hold = ledger.acquire(relationship, "evt-1")
    refusals = ledger.fence_all([hold], lease_seconds=1)
    assert refusals[0] is not None and "too late" in str(refusals[0])

    # Then the ledger says it is slow, since when, in a log line and a metric
    status = ledger.status
    assert status.state is LedgerState.SLOW
    assert status.since is not None and began <= status.since.timestamp() <= time.time()
    assert REGISTRY.get_sample_value("ccsync_ledger_slow") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("slow" in line for line in warnings), warnings
    # and, slow for long enough, no longer healthy
    assert status.healthy(now=status.since.timestamp() + 1)
    assert not status.healthy(now=status.since.timestamp() + UNHEALTHY_AFTER_SECONDS)

    # When Redis answers quickly again for a while
    proxy.reply_delay_seconds = 0.0

    def recovered() -> bool:
        ledger.ping()
        return ledger.status.state is LedgerState.OK

    # Then, after a slow spell without slow answers, it says so
    assert not recovered()
    wait_until(recovered, SLOW_SPELL_SECONDS + 10, "the ledger to be well again", interval=0.5)
    assert ledger.status.since is None
    assert REGISTRY.get_sample_value("ccsync_ledger_slow") == 0
    assert ledger.leave_all([hold]) == [True]


def test_given_redis_unreachable_then_the_ledger_says_unavailable_since_when(
    server: RedisProcess,
) -> None:
    ledger = _ledger(server)
    ledger.ping()
    server.stop()
    before = time.time()
    with pytest.raises(LedgerUnavailable):
        ledger.ping()
    status = ledger.status
    assert status.state is LedgerState.UNAVAILABLE
    assert status.since is not None and status.since.timestamp() >= before - 0.01
    assert REGISTRY.get_sample_value("ccsync_ledger_unavailable") == 1
