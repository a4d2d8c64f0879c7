"""Login attempts, rate-limited per client address: guessing the token takes forever.

A sliding window: at most ``MAX_FAILURES`` failed logins per address in ``WINDOW_SECONDS``; while
an address is over it, every login attempt from it is refused without checking the token.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

#: Failed logins allowed per client address within the window.
MAX_FAILURES: Final = 5
#: Seconds the failures are remembered.
WINDOW_SECONDS: Final = 60.0
#: Addresses remembered at most: the oldest are forgotten first, so memory stays bounded.
MAX_ADDRESSES: Final = 10_000


class LoginLimiter:
    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(address)
            if len(recent) < self._max:
                return 0.0
            return max(0.0, recent[0] + self._window - self._clock())

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self._clock())
            while len(self._failures) > MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float]:
        recent = self._failures.setdefault(address, deque())
        horizon = self._clock() - self._window
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent
