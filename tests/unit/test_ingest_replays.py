"""Repeated webhook-ids, on the real Redis: the first delivery publishes, a repeat gets its answer,
a delivery during the first one's publication is told to retry, a failed one frees the id."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from worker.ingest.authentication import WEBHOOK_TOLERANCE_SECONDS, SignedRequest
from worker.ingest.replays import (
    CLAIM_SECONDS,
    KEY_PREFIX,
    WebhookInFlight,
    WebhookReplays,
)
from worker.processing.ledger.client import redis_client
from worker.settings import Settings

ANSWER = {"accepted": 1, "eventIds": ["e-1"]}


@pytest.fixture
def replays(redis_url: str) -> Iterator[WebhookReplays]:
    guard = WebhookReplays(Settings(_env_file=None, redis_url=redis_url))
    yield guard
    guard.close()


def _signed() -> SignedRequest:
    return SignedRequest(f"msg-{uuid.uuid4()}", int(time.time()))


class Publisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the broker did not confirm")
        return ANSWER


def test_given_a_repeated_id_then_it_gets_the_first_answer_and_publishes_nothing(
    replays: WebhookReplays, redis_url: str
) -> None:
    signed, publish = _signed(), Publisher()

    async def deliver_twice() -> list[dict[str, Any]]:
        return [await replays.once(signed, publish), await replays.once(signed, publish)]

    assert asyncio.run(deliver_twice()) == [ANSWER, ANSWER]
    assert publish.calls == 1
    # And the id is kept exactly as long as a delivery of it can pass authentication
    client = redis_client(redis_url, timeout=2)
    key = KEY_PREFIX + hashlib.sha256(signed.message_id.encode()).hexdigest()
    assert client.expiretime(key) == signed.timestamp + WEBHOOK_TOLERANCE_SECONDS + 1
    client.close()


def test_given_a_delivery_while_the_first_is_publishing_then_it_is_told_to_retry(
    replays: WebhookReplays,
) -> None:
    signed, publish = _signed(), Publisher()

    async def overlapping() -> None:
        publish.release.clear()
        first = asyncio.create_task(replays.once(signed, publish))
        while publish.calls == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(WebhookInFlight, match="retry"):
            await replays.once(signed, publish)
        publish.release.set()
        assert await first == ANSWER

    asyncio.run(overlapping())
    assert publish.calls == 1


def test_given_a_failed_publication_then_the_retry_publishes(replays: WebhookReplays) -> None:
    signed, failing = _signed(), Publisher(fail=True)

    async def fail_then_retry() -> dict[str, Any]:
        with pytest.raises(RuntimeError):
            await replays.once(signed, failing)
        return await replays.once(signed, Publisher())

    assert asyncio.run(fail_then_retry()) == ANSWER
    assert CLAIM_SECONDS < WEBHOOK_TOLERANCE_SECONDS, "a dead server's claim frees the id in time"
