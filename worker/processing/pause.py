"""An operator's pause of a whole deployment (``ccsync pause`` / ``ccsync resume``), in Redis.

The deployment's shared store holds one record while it is paused: JSON with the reason, who
paused it (``user@host``) and when. Every worker watches the record and holds its consumption of
``ccsync.events`` and ``ccsync.tasks`` while it is there; a worker that starts reads it before it
consumes anything. So a pause outlives restarts and reaches workers that join later, until
``ccsync resume`` deletes the record.

A deployment is the broker's virtual host: workers of two deployments that share one Redis (and
test runs, each in a throwaway virtual host) do not pause each other.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from worker.exceptions import LedgerUnavailable
from worker.processing.ledger import KEY_PREFIX
from worker.processing.ledger.client import REDIS_FAILURES, RedisClient, redis_client

#: Seconds one Redis round trip of the pause may take before Redis counts as unreachable.
PAUSE_TIMEOUT_SECONDS = 3.0
#: Seconds between two reads of the record by each worker: how soon every worker obeys.
POLL_SECONDS = 1.0
#: The longest reason kept: it is shown in logs, metrics labels and ``ccsync health``.
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Pause:
    """One pause: why, who (``user@host``) and when (ISO 8601, UTC)."""

    reason: str
    by: str
    at: str

    @classmethod
    def now(cls, reason: str) -> Pause:
        """A pause by the user running this process, on this host, at this moment."""
        return cls(
            reason=reason[:MAX_REASON_CHARS], by=who_am_i(), at=datetime.now(UTC).isoformat()
        )

    def describe(self) -> str:
        """``paused by alice@ops-1 at 2025-…: reason`` (the reason only when one was given)."""
        return f"paused by {self.by} at {self.at}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> str:
        return json.dumps({"reason": self.reason, "by": self.by, "at": self.at})

    @classmethod
    def from_json(cls, text: str | bytes) -> Pause:
        """The pause a record holds; a record that is not ours still pauses (reason unknown)."""
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return cls(reason="(unreadable pause record)", by="unknown", at="unknown")
        return cls(
            reason=str(value.get("reason") or ""),
            by=str(value.get("by") or "unknown"),
            at=str(value.get("at") or "unknown"),
        )


def who_am_i() -> str:
    """``user@host`` of this process, as far as the system tells."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def virtual_host(broker_url: str) -> str:
    """The virtual host of a broker URL, as kombu reads it (the first URL of a list)."""
    first = broker_url.split(";", 1)[0].strip()
    try:
        path = urlsplit(first).path
    except ValueError:
        return "/"
    return "/" if path in ("", "/") else unquote(path[1:])


class PauseStore:
    """The pause record of one deployment. Every method raises ``LedgerUnavailable`` when Redis
    does not answer."""

    def __init__(self, client: RedisClient, *, deployment: str, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self.key = f"{prefix}:pause:{deployment}"

    @classmethod
    def from_url(
        cls, url: str, *, deployment: str, timeout: float = PAUSE_TIMEOUT_SECONDS
    ) -> PauseStore:
        client = redis_client(url, timeout=timeout)
        return cls(client, deployment=deployment)

    def read(self) -> Pause | None:
        """The pause in force, or None when the deployment runs."""
        try:
            raw = self._redis.get(self.key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from None
        return None if raw is None else Pause.from_json(raw)

    def pause(self, pause: Pause) -> Pause | None:
        """Records ``pause`` (replacing any earlier one, which is returned)."""
        try:
            previous = self._redis.set(self.key, pause.to_json(), get=True)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from None
        return Pause.from_json(previous) if isinstance(previous, str | bytes) else None

    def resume(self) -> Pause | None:
        """Deletes the record; returns the pause it lifted, None if there was none."""
        try:
            pipeline = self._redis.pipeline(transaction=True)
            pipeline.get(self.key)
            pipeline.delete(self.key)
            raw, _ = pipeline.execute()
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from None
        return None if raw is None else Pause.from_json(raw)

    def close(self) -> None:
        self._redis.close()


def _unavailable(exc: Exception) -> LedgerUnavailable:
    return LedgerUnavailable(f"Redis did not answer: {type(exc).__name__}: {exc}")
