"""Login attempts, rate-limited per client address and for all addresses together: guessing the
token takes forever, however many addresses the guesses come from.

A sliding window: at most ``MAX_FAILURES`` failed logins per address and ``MAX_FAILURES_TOTAL``
from all addresses in ``WINDOW_SECONDS``. An attempt is reserved before its token is checked (the
check of the limits and the count are one step under one lock): concurrent guesses cannot all
slip through between a check and a count. A reservation counts as a failure until the attempt
succeeds, which gives it back and forgives its address.

The limits live in the console's memory, like its sessions: one console process, one count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: Failed logins allowed per client address within the window.
MAX_FAILURES: Final = 5
#: Failed logins allowed from all addresses together within the window: bounds the guesses of
#: an attacker with many addresses, at the price of locking every operator out while it lasts
#: (a long console token makes even this rate hopeless for the guesser).
MAX_FAILURES_TOTAL: Final = 50
#: Seconds the failures are remembered.
WINDOW_SECONDS: Final = 60.0
#: Addresses remembered at most: the oldest are forgotten first, so memory stays bounded (the
#: budget for all addresses still counts their failures).
MAX_ADDRESSES: Final = 10_000


@dataclass(frozen=True)
class Verdict:
    """What ``LoginLimiter.reserve`` decided for one attempt."""

    #: True: the attempt is reserved, its token may be checked.
    allowed: bool
    #: Seconds until the address may try again; 0 when allowed.
    retry_after: float = 0.0
    #: A refusal the audit log should show: the first of its address in the current lockout.
    first_refusal: bool = False
    #: When the reservation was made (given back by ``succeeded``).
    at: float = 0.0


@dataclass
class _Address:
    failures: deque[float] = field(default_factory=deque)
    #: Refusals until this moment have been reported already.
    reported_until: float = float("-inf")


class LoginLimiter:
    """Thread-safe; ``reserve`` before checking a token, ``succeeded`` when it matched."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        max_failures_total: int = MAX_FAILURES_TOTAL,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._max_total = max_failures_total
        self._window = window
        self._clock = clock
        self._addresses: dict[str, _Address] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self, address: str) -> Verdict:
        """Counts an attempt from ``address`` as a failure, if the limits allow one more."""
        with self._lock:
            now = self._clock()
            entry = self._addresses.setdefault(address, _Address())
            horizon = now - self._window
            for failures in (entry.failures, self._all):
                while failures and failures[0] <= horizon:
                    failures.popleft()
            wait = 0.0
            if len(entry.failures) >= self._max:
                wait = entry.failures[0] + self._window - now
            if len(self._all) >= self._max_total:
                wait = max(wait, self._all[0] + self._window - now)
            if wait > 0:
                first = entry.reported_until <= now
                if first:
                    entry.reported_until = now + wait
                return Verdict(False, retry_after=wait, first_refusal=first)
            entry.failures.append(now)
            self._all.append(now)
            while len(self._addresses) > MAX_ADDRESSES:
                del self._addresses[next(iter(self._addresses))]
            return Verdict(True, at=now)

    def succeeded(self, address: str, reservation: Verdict) -> None:
        """The attempt of ``reservation`` matched: it was no failure; ``address`` is forgiven."""
        with self._lock:
            self._addresses.pop(address, None)
            if reservation.at in self._all:
                self._all.remove(reservation.at)
