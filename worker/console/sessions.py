"""Operators' sessions: the token checked in constant time, then a random session id in a cookie.

Sessions live in the server's memory: a restart logs everyone out, which for an operators' tool
is a feature. A session ends at its lifetime, or earlier when it goes unused for its idle time.
Each session has its own CSRF token, which every state-changing request must carry (a form field
or the ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

#: The session cookie's name.
SESSION_COOKIE: Final = "ccsync_console_session"
#: Bytes of randomness of a session id and of a CSRF token.
TOKEN_BYTES: Final = 32
#: Characters of an operator's name kept for the audit log.
MAX_NAME_CHARS: Final = 40
#: Put before a cookie's name when the console is served over TLS: browsers then keep the cookie
#: only if it is Secure, for the whole site, and set by this host (no Domain): a sibling
#: subdomain or a plain-http page cannot plant or overwrite it.
SECURE_COOKIE_PREFIX: Final = "__Host-"


def cookie_name(name: str, *, secure: bool) -> str:
    """``name`` as the cookie is called over TLS (``secure``) or plain http."""
    return f"{SECURE_COOKIE_PREFIX}{name}" if secure else name


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
    #: When it was last used; it ends once idle for the sessions' idle time.
    used_at: float

    def csrf_matches(self, offered: str | None) -> bool:
        return offered is not None and token_matches(offered, self.csrf_token)


class Sessions:
    """The live sessions; thread-safe (pages and jobs run on several threads). Each lasts
    ``lifetime`` seconds at most, and ends once unused for ``idle`` seconds."""

    def __init__(
        self, lifetime: float, *, idle: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._lifetime = lifetime
        self._idle = idle
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def lifetime(self) -> float:
        return self._lifetime

    def open(self, operator: str) -> Session:
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(TOKEN_BYTES),
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            operator=operator_name(operator),
            expires_at=now + self._lifetime,
            used_at=now,
        )
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        """The live session of ``session_id``; None when unknown, expired or idle too long.

        ``touch``: the operator used it now (a page, an action), which restarts its idle time;
        a poll the page makes on its own touches nothing.
        """
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            now = self._clock()
            if self._ended(session, now):
                del self._sessions[session_id]
                return None
            if touch:
                session = self._sessions[session_id] = replace(session, used_at=now)
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def close_operator(self, operator: str) -> int:
        """Ends every session of ``operator`` (as ``open`` named it); returns how many."""
        name = operator_name(operator)
        with self._lock:
            ended = [key for key, s in self._sessions.items() if s.operator == name]
            for key in ended:
                del self._sessions[key]
        return len(ended)

    def _ended(self, session: Session, now: float) -> bool:
        return session.expires_at <= now or session.used_at + self._idle <= now

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [key for key, s in self._sessions.items() if self._ended(s, now)]:
            del self._sessions[key]
