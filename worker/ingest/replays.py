"""A signed webhook is published once: a delivery that repeats a ``webhook-id`` is answered as the
first one was, and publishes nothing (Standard Webhooks senders retry with the same id).

Each id is claimed in Redis with ``SET NX`` before its events are published. The claim says
``pending`` (and expires after ``CLAIM_SECONDS``, so that a server that died while publishing
frees the id for the sender's next retry); once the broker confirmed the events, it holds the
answer until the request's timestamp leaves the tolerance window, after which authentication
refuses the delivery anyway. A failed publication releases the claim: the retry publishes.

A delivery arriving while its id is ``pending`` is answered 409 with ``Retry-After``; when Redis
cannot be asked, 503 with ``Retry-After``. Either way nothing is published and the sender retries.
Requests with the bearer token carry no id and are published as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from redis.exceptions import RedisClusterException, RedisError

from worker.exceptions import CcsyncError
from worker.ingest.authentication import WEBHOOK_TOLERANCE_SECONDS, SignedRequest
from worker.processing.ledger.client import redis_client
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a claim stays ``pending`` at most: longer than publishing a request may take (a connect
#: and two confirm timeouts of ``worker.ingest.publishing``), short for a sender's next retry.
CLAIM_SECONDS: Final = 60
#: Seconds each Redis command (and a connect) may take before the request is answered 503.
REDIS_TIMEOUT_SECONDS: Final = 2.0
#: Requests asking Redis at once; more wait for a thread (each wait is bounded by the timeout).
REDIS_THREADS: Final = 4
KEY_PREFIX: Final = "ccsync:ingest:webhook-id:"
PENDING: Final = "pending"

#: An answer to a request: the JSON body of its 202.
Answer = dict[str, Any]


class WebhookInFlight(CcsyncError):
    """Answer 409 with ``Retry-After``: a delivery with this ``webhook-id`` is being published."""


class ReplaysUnavailable(CcsyncError):
    """Answer 503 with ``Retry-After``: Redis cannot say whether this ``webhook-id`` was seen."""


class WebhookReplays:
    """The ids of the signed webhooks published within the tolerance window, in Redis."""

    def __init__(self, settings: Settings) -> None:
        self._redis = redis_client(
            settings.redis_url, timeout=REDIS_TIMEOUT_SECONDS, max_connections=REDIS_THREADS
        )
        self._executor = ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="ingest-replays")

    async def once(self, signed: SignedRequest, publish: Callable[[], Awaitable[Answer]]) -> Answer:
        """The answer of the first delivery of ``signed.message_id``: ``publish``'s, awaited now
        if this is the first, else the stored one. Raises ``WebhookInFlight`` while another
        delivery of the id is being published, ``ReplaysUnavailable`` when Redis fails."""
        key = KEY_PREFIX + hashlib.sha256(signed.message_id.encode()).hexdigest()
        earlier: Answer | None = await self._redis_call(self._claim, key)
        if earlier is not None:
            return earlier
        try:
            answer = await publish()
        except BaseException:
            await self._forget(key)
            raise
        expires_at = signed.timestamp + WEBHOOK_TOLERANCE_SECONDS + 1
        try:
            await self._redis_call(self._settle, key, answer, expires_at)
        except ReplaysUnavailable as exc:
            # Published: the answer stands. The pending claim expires; a later retry publishes
            # again, and the worker absorbs it as a duplicate (same eventIds).
            log.warning("ingest: published, but the webhook-id was not kept: %s", exc)
        return answer

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._redis.close()

    def _claim(self, key: str) -> Answer | None:
        stored = None
        while stored is None:  # None: the claim expired between the two commands
            if self._redis.set(key, PENDING, nx=True, ex=CLAIM_SECONDS):
                return None
            stored = self._redis.get(key)
        if stored in (PENDING, PENDING.encode()):
            raise WebhookInFlight(
                "a delivery with this webhook-id is being published: retry in a few seconds"
            )
        answer: Answer = json.loads(stored)
        return answer

    def _settle(self, key: str, answer: Answer, expires_at: int) -> None:
        self._redis.set(key, json.dumps(answer, separators=(",", ":")), exat=expires_at)

    async def _forget(self, key: str) -> None:
        try:
            await self._redis_call(self._redis.delete, key)
        except ReplaysUnavailable as exc:
            log.warning("ingest: the claim on a webhook-id stays until it expires: %s", exc)

    async def _redis_call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except (RedisError, RedisClusterException) as exc:
            raise ReplaysUnavailable(
                f"Redis cannot tell whether this webhook-id was published: {type(exc).__name__}"
            ) from None
