"""Bearer tokens for CloudCockpit: a static one, or Entra's client-credentials flow.

The flow, its URL and scope are described in docs/cloudcockpit-api.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol

import httpx

from worker.exceptions import TokenUnavailable

log = logging.getLogger(__name__)

#: Renew this long before expiry so that a token never expires between being read and being used.
RENEW_MARGIN_SECONDS = 300.0
#: After a failed fetch, the pause before the next one; it doubles with each failure in a row.
FIRST_RENEWAL_BACKOFF_SECONDS = 1.0
#: The longest pause between two fetches that failed: a few tries fit in the renewal margin.
MAX_RENEWAL_BACKOFF_SECONDS = 60.0


class TokenSource(Protocol):
    def token(self) -> str:
        """A token believed valid now."""

    def renew(self, rejected: str) -> str:
        """A token other than ``rejected`` (answered 401 by CloudCockpit), if one can be had."""

    def cached(self) -> str | None:
        """The token ``token`` would return now without a request or a wait, else None: an event
        loop takes it from here and calls ``token`` from a thread only when this is None."""


class StaticToken:
    """``CLOUDCOCKPIT_TOKEN``: nothing to renew; a 401 stays a 401."""

    def __init__(self, value: str) -> None:
        self._value = value

    def token(self) -> str:
        return self._value

    def renew(self, rejected: str) -> str:
        return self._value

    def cached(self) -> str | None:
        return self._value


class ClientCredentialsToken:
    """Asks the token endpoint for a token, caches it, and renews it before it expires.

    Shared by every thread of a worker process. One thread at a time fetches, outside the lock:

    - while the cached token is valid but due for renewal, one caller renews it and every other
      caller keeps using the cached token meanwhile; a failed renewal is logged and the cached
      token still served, so the renewal window rides out a token endpoint outage;
    - without a valid token (none yet, expired, or rejected with a 401), callers wait for the one
      fetch in progress and share its result, token or ``TokenUnavailable``;
    - a failed fetch backs off: no fetch is tried before ``FIRST_RENEWAL_BACKOFF_SECONDS``,
      doubling with each failure in a row up to ``MAX_RENEWAL_BACKOFF_SECONDS`` (never past the
      cached token's expiry). Without a valid token, a call during the backoff fails at once.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
    ) -> None:
        self._client = client
        self._token_url = token_url
        self._form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "client_credentials",
            "scope": scope,
        }
        # Guards the fields below; held for bookkeeping only, never across a request.
        self._changed = threading.Condition(threading.Lock())
        self._value: str | None = None
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._fetching = False
        self._next_fetch_at = 0.0
        self._backoff = FIRST_RENEWAL_BACKOFF_SECONDS
        self._last_error: TokenUnavailable | None = None

    def token(self) -> str:
        return self._obtain(rejected=None)

    def renew(self, rejected: str) -> str:
        return self._obtain(rejected=rejected)

    def cached(self) -> str | None:
        with self._changed:
            now = time.monotonic()
            if self._value is None or now >= self._expires_at:
                return None
            if now < self._renew_at or self._fetching or now < self._next_fetch_at:
                return self._value
            return None  # due for renewal: ``token`` makes this caller the one that renews

    def _obtain(self, *, rejected: str | None) -> str:
        with self._changed:
            while True:
                now = time.monotonic()
                if self._value is not None and self._value == rejected:
                    # CloudCockpit refused it: no longer worth serving, whatever its expiry.
                    self._expires_at = now
                current = self._value if now < self._expires_at else None
                if current is not None:
                    if now < self._renew_at or self._fetching or now < self._next_fetch_at:
                        return current
                    break  # this caller renews; the others keep using ``current`` meanwhile
                if self._fetching:
                    self._changed.wait()
                    continue
                if now < self._next_fetch_at:
                    assert self._last_error is not None
                    raise TokenUnavailable(
                        f"{self._last_error.error}; next try in {self._next_fetch_at - now:.0f}s",
                        self._last_error.status,
                    )
                break
            self._fetching = True
        try:
            value, lifetime = self._fetch()
        except TokenUnavailable as exc:
            self._failed(exc, current=current)
            if current is None:
                raise
            return current
        except BaseException:
            self._failed(TokenUnavailable("token fetch failed"), current=current)
            raise
        with self._changed:
            now = time.monotonic()
            self._value = value
            self._expires_at = now + lifetime
            self._renew_at = now + max(lifetime - RENEW_MARGIN_SECONDS, lifetime / 2)
            self._next_fetch_at = 0.0
            self._backoff = FIRST_RENEWAL_BACKOFF_SECONDS
            self._last_error = None
            self._fetching = False
            self._changed.notify_all()
        return value

    def _failed(self, error: TokenUnavailable, *, current: str | None) -> None:
        """Records a failed fetch: the next one waits out the backoff, which then doubles."""
        with self._changed:
            now = time.monotonic()
            next_at = now + self._backoff
            if current is not None:
                # The first call after the expiry may try again at once.
                next_at = min(next_at, self._expires_at)
            self._next_fetch_at = next_at
            self._backoff = min(self._backoff * 2, MAX_RENEWAL_BACKOFF_SECONDS)
            self._last_error = error
            self._fetching = False
            self._changed.notify_all()
            valid_for = self._expires_at - now
        if current is not None:
            log.warning(
                "token renewal failed (%s); the current token stays in use, valid for %.0fs more",
                error.error,
                valid_for,
            )

    def _fetch(self) -> tuple[str, float]:
        """One request to the token endpoint: the token and its lifetime in seconds."""
        try:
            response = self._client.post(self._token_url, data=self._form)
        except httpx.TransportError as exc:
            raise TokenUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
        except httpx.DecodingError as exc:
            raise TokenUnavailable(
                f"token endpoint gave no usable answer: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise TokenUnavailable(
                f"token endpoint answered {response.status_code}", response.status_code
            )
        try:
            answer = response.json()
            value = answer["access_token"]
            lifetime = float(answer.get("expires_in", 3599))
        except (ValueError, KeyError, TypeError, RecursionError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value or not math.isfinite(lifetime) or lifetime <= 0:
            raise TokenUnavailable("token endpoint answered without a usable access_token")
        return value, lifetime
