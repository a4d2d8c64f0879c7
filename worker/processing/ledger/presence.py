"""A worker's presence in Redis: the record that says it is alive, and the deadline it sets on
its own calls.

Each worker keeps one key, ``{prefix}:presence:<owner>``, which expires ``PRESENCE_TTL_SECONDS``
after its last renewal; a thread renews it every ``PRESENCE_RENEW_SECONDS``. The locks the
worker's lanes take carry its owner id (``owned_token``), so a script finding such a lock can
tell whether its owner is still there (``presence.lua``).

A missing record must also mean that the owner's calls are over, whether it died or only lost
Redis (a partition, a pause): so the worker cuts every call of its lanes once its record may have
expired. ``valid_until`` is that moment on this worker's monotonic clock: the time taken before
the last renewal that Redis confirmed, plus the record's lifetime, less a margin for the two
clocks' drift and for the event loop's turn. Redis starts the lifetime later (when the renewal
arrives), so the record outlives ``valid_until`` by at least that margin.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from worker.exceptions import LedgerUnavailable
from worker.processing.ledger.client import RedisClient, unavailable_on_failure

log = logging.getLogger(__name__)

#: Seconds a worker's presence record lives after its last renewal: how long after a worker's
#: death the locks of its lanes can be taken over.
PRESENCE_TTL_SECONDS = 10.0
#: Seconds between two renewals of the record.
PRESENCE_RENEW_SECONDS = 2.0
#: Seconds before its record may expire when a worker cuts its own calls.
PRESENCE_MARGIN_SECONDS = 1.0
#: Between the owner id and the random part of a lock token (``owned_token``).
OWNER_SEPARATOR = "."


def presence_key_prefix(prefix: str) -> str:
    """What the presence record of each worker of the ledger ``prefix`` is keyed by, before its
    owner id."""
    return f"{prefix}:presence:"


def owned_token(owner: str, token: str) -> str:
    """A lock token that names its owner: ``presence.lua`` reads the owner back."""
    return f"{owner}{OWNER_SEPARATOR}{token}"


class Presence:
    """This worker's presence record: ``renew`` it; ``run`` renews it for ever.

    ``owner`` is drawn afresh for each worker process (hex digits, as ``presence.lua`` expects).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        ttl_seconds: float = PRESENCE_TTL_SECONDS,
        renew_seconds: float = PRESENCE_RENEW_SECONDS,
    ) -> None:
        self.owner = secrets.token_hex(8)
        self.key_prefix = presence_key_prefix(prefix)
        self._redis = client
        self._ttl_seconds = ttl_seconds
        self._renew_seconds = renew_seconds
        self._valid_until = 0.0
        self._lapsed = False

    @property
    def valid_until(self) -> float:
        """Monotonic seconds until which the record surely exists: the deadline of every call of
        the worker's lanes."""
        return self._valid_until

    def renew(self) -> None:
        """Sets the record for another lifetime; ``LedgerUnavailable`` if Redis does not
        confirm it (``valid_until`` then stays where it was)."""
        asked = time.monotonic()
        with unavailable_on_failure():
            self._redis.set(self.key_prefix + self.owner, 1, px=int(self._ttl_seconds * 1000))
        self._valid_until = asked + self._ttl_seconds - PRESENCE_MARGIN_SECONDS

    def run(self, beat: Callable[[], None]) -> None:
        """A stage's loop (``worker.runtime.pipeline``): renews the record every
        ``PRESENCE_RENEW_SECONDS``, for ever, and beats each round."""
        log.info("this worker's presence: %s%s", self.key_prefix, self.owner)
        while True:
            beat()
            try:
                self.renew()
            except LedgerUnavailable as exc:
                if not self._lapsed and time.monotonic() >= self._valid_until:
                    self._lapsed = True
                    log.error(
                        "this worker's presence lapsed (%s): its calls are cut, and other "
                        "workers may take over its customers, until Redis answers again",
                        exc,
                    )
            else:
                if self._lapsed:
                    self._lapsed = False
                    log.warning("this worker's presence is renewed again")
            time.sleep(self._renew_seconds)
