"""Operators' sessions: the token checked in constant time, then a random session id in a cookie.

Sessions live in the server's memory: a restart logs everyone out, which for an operators' tool
is a feature. Each session has its own CSRF token, which every state-changing request must
carry (a form field or the ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The session cookie's name.
SESSION_COOKIE: Final = "ccsync_console_session"
#: Bytes of randomness of a session id and of a CSRF token.
TOKEN_BYTES: Final = 32
#: Characters of an operator's name kept for the audit log.
MAX_NAME_CHARS: Final = 40


def token_matches(offered: str, expected: str) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much matched."""
    return hmac.compare_digest(offered.encode("utf-8"), expected.encode("utf-8"))


def operator_name(text: str) -> str:
    """The name an operator gave at login, made safe for a log line: visible ASCII, no spaces."""
    kept = "".join(
        ch if ch.isascii() and ch.isprintable() and not ch.isspace() else "_" for ch in text
    )
    return kept.strip("_")[:MAX_NAME_CHARS] or "operator"


@dataclass(frozen=True)
class Session:
    id: str
    csrf_token: str
    operator: str
    expires_at: float

    def csrf_matches(self, offered: str | None) -> bool:
        return offered is not None and token_matches(offered, self.csrf_token)


class Sessions:
    """The live sessions; thread-safe (pages and jobs run on several threads)."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self._lifetime = lifetime
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def lifetime(self) -> float:
        return self._lifetime

    def open(self, operator: str) -> Session:
        session = Session(
            id=secrets.token_urlsafe(TOKEN_BYTES),
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            operator=operator_name(operator),
            expires_at=self._clock() + self._lifetime,
        )
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; None when unknown or expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [key for key, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
