"""Outage protection: when CloudCockpit (or the ledger) fails systemically, stop and wait.

A run of ``threshold`` systemic failures in a row (5xx, no answer, a 401 that survives a token
renewal, Redis unreachable) opens the guard: the worker stops taking events, events already in
hand go back to the broker without spending an attempt, and a probe asks the API (and Redis) with
growing pauses whether it is back. The first good answer closes the guard and consumption resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutagePolicy:
    threshold: int = 5
    first_probe_seconds: float = 1.0
    max_probe_seconds: float = 30.0


class OutageGuard:
    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        on_open: Callable[[], None],
        on_close: Callable[[], None],
        policy: OutagePolicy | None = None,
    ) -> None:
        self._probe = probe
        self._on_open = on_open
        self._on_close = on_close
        self._policy = policy or OutagePolicy()
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._interval = self._policy.first_probe_seconds
        self._opened_at = 0.0
        self._stopped = threading.Event()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def retry_in(self) -> float:
        """How long an event in hand waits in the broker while the guard is open."""
        return max(self._interval, self._policy.first_probe_seconds)

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0

    def record_failure(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            if self._open or self._failures < self._policy.threshold:
                return
            self._open = True
            self._opened_at = time.monotonic()
            self._interval = self._policy.first_probe_seconds
        log.error(
            "outage: %d systemic failures in a row (last: %s); pausing consumption and probing",
            self._policy.threshold,
            error,
        )
        self._on_open()
        threading.Thread(
            target=self._probe_until_back, name="ccsync-outage-probe", daemon=True
        ).start()

    def stop(self) -> None:
        self._stopped.set()

    def _probe_until_back(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                healthy = self._probe()
            except Exception:
                log.exception("outage probe failed")
                healthy = False
            if healthy:
                break
            self._interval = min(self._interval * 2, self._policy.max_probe_seconds)
            log.warning("outage: still down; next probe in %.0fs", self._interval)
        else:
            return
        with self._lock:
            self._open = False
            self._failures = 0
            lasted = time.monotonic() - self._opened_at
        log.warning("outage over after %.0fs: resuming consumption", lasted)
        self._on_close()
