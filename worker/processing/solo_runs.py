"""Which message crashed the worker: the runs of redelivered messages, counted in Redis.

When a worker dies, the broker raises the delivery count of every message it had in hand, the
poison's and its neighbours' alike, so that count cannot tell them apart. The intake therefore
counts each run of a redelivered message here before it starts; a run that reaches an outcome is
struck off. A count left standing means the message was running when a worker died, or was
handed back without an outcome.

A redelivered message with no count standing (one crash, the common case: a worker killed or
restarted) runs at once, beside the others. One with a count standing was running when a worker
died before: a suspect, it runs alone (nothing else in flight), so that if the worker dies again,
only it is charged. A poison thus reaches the delivery limit alone, and its neighbours, each
struck off once its run alone ends, never do; a crash serialises only the messages that were in
flight at two crashes in a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from worker.constants import HEADER_DELIVERY_COUNT
from worker.processing.ledger import KEY_PREFIX
from worker.processing.ledger.client import RedisClient, redis_client, unavailable_on_failure

#: Seconds a count outlives the last run it counted: a redelivery comes long before.
SOLO_RUNS_TTL_SECONDS = 7 * 24 * 3600
#: Seconds one Redis round trip may take: the intake waits for it in the worker's event loop.
SOLO_RUNS_TIMEOUT_SECONDS = 1.0


def message_key(body: bytes, headers: Mapping[str, Any]) -> str:
    """The same for every delivery of one message: a digest of its body and of its headers
    (the broker's delivery count left out)."""
    digest = hashlib.sha256(body)
    kept = sorted((name, repr(value)) for name, value in headers.items())
    digest.update(repr([item for item in kept if item[0] != HEADER_DELIVERY_COUNT]).encode())
    return digest.hexdigest()


class SoloRuns:
    """Counts, per message, its runs that did not reach an outcome.

    Used from one thread (the intake's event loop). Every method raises ``LedgerUnavailable``
    when Redis does not answer.
    """

    def __init__(self, client: RedisClient, *, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str = KEY_PREFIX) -> SoloRuns:
        client = redis_client(url, timeout=SOLO_RUNS_TIMEOUT_SECONDS)
        return cls(client, prefix=prefix)

    def _key(self, message: str) -> str:
        return f"{self._prefix}:solo:{message}"

    def runs(self, message: str) -> int:
        """How many runs of the message (``message_key``) ended without an outcome."""
        with unavailable_on_failure():
            count = self._redis.get(self._key(message))
        return 0 if count is None else int(count)

    def begin(self, message: str) -> int:
        """Counts the run that starts now; returns how many earlier runs of the message
        (``message_key``) ended without an outcome."""
        with unavailable_on_failure():
            pipeline = self._redis.pipeline(transaction=True)
            pipeline.incr(self._key(message))
            pipeline.expire(self._key(message), SOLO_RUNS_TTL_SECONDS)
            count, _ = pipeline.execute()
        return int(count) - 1

    def concluded(self, message: str) -> None:
        """The message reached an outcome (applied, skipped, retried or dead-lettered): none of
        its runs is held against it any more."""
        with unavailable_on_failure():
            self._redis.delete(self._key(message))

    def close(self) -> None:
        self._redis.close()
