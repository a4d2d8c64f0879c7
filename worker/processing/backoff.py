"""When to try an event again: the backoff policy of ``CCSYNC_RETRY_DELAYS``, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from worker.exceptions import TransientFailure


@dataclass(frozen=True)
class RetryPolicy:
    """``delays[n-1]`` seconds before retry n, plus up to ``jitter`` of it at random.

    The jitter only lengthens a delay: the configured value is a floor operators can rely on, and
    events failed by one outage do not all come back in the same instant.
    """

    delays: tuple[float, ...]
    jitter: float = 0.2

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay_after(
        self, attempt: int, failure: TransientFailure, rng: random.Random
    ) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based); None when none are left."""
        if attempt >= self.max_attempts:
            return None
        base = self.delays[attempt - 1]
        delay = base + base * self.jitter * rng.random()
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return delay
