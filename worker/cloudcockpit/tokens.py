"""Bearer tokens for CloudCockpit: a static one, or Entra's client-credentials flow.

The flow, its URL and scope are described in docs/cloudcockpit-api.md.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

import httpx

from worker.exceptions import TokenUnavailable

# Renew this long before expiry so that a token never expires between being read and being used.
RENEW_MARGIN_SECONDS = 300.0


class TokenSource(Protocol):
    def token(self) -> str:
        """A token believed valid now."""

    def renew(self, rejected: str) -> str:
        """A token other than ``rejected`` (answered 401 by CloudCockpit), if one can be had."""


class StaticToken:
    """``CLOUDCOCKPIT_TOKEN``: nothing to renew; a 401 stays a 401."""

    def __init__(self, value: str) -> None:
        self._value = value

    def token(self) -> str:
        return self._value

    def renew(self, rejected: str) -> str:
        return self._value


class ClientCredentialsToken:
    """Asks the token endpoint for a token, caches it, and renews it before it expires.

    Shared by every thread of a worker process: the lock makes one thread fetch while the others
    wait for its result instead of stampeding the token endpoint.
    """

    def __init__(
        self,
        client: httpx.Client,
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
        self._lock = threading.Lock()
        self._value: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._value is None or time.monotonic() >= self._renew_at:
                self._fetch()
            assert self._value is not None
            return self._value

    def renew(self, rejected: str) -> str:
        with self._lock:
            if self._value == rejected or self._value is None:
                self._fetch()
            assert self._value is not None
            return self._value

    def _fetch(self) -> None:
        try:
            response = self._client.post(self._token_url, data=self._form)
        except httpx.TransportError as exc:
            raise TokenUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
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
        self._value = value
        self._renew_at = time.monotonic() + max(lifetime - RENEW_MARGIN_SECONDS, lifetime / 2)
