"""Backing off a relationship another event holds: the one schedule the gate and the ledger use."""

from __future__ import annotations

from dataclasses import dataclass

#: First pause before a relationship another event holds is tried again; it doubles each time.
BUSY_FIRST_PAUSE_SECONDS = 0.005
#: Longest pause between two tries of a busy relationship, until the lock wait is over.
BUSY_LONGEST_PAUSE_SECONDS = 0.2


@dataclass
class BusyBackoff:
    """The pauses between tries of one busy relationship: ``BUSY_FIRST_PAUSE_SECONDS``, then
    doubling up to ``BUSY_LONGEST_PAUSE_SECONDS``. One per waiting event; not thread-safe."""

    pause_seconds: float = BUSY_FIRST_PAUSE_SECONDS

    def next_pause(self) -> float:
        """The pause to wait now, before the next try; the one after it is longer."""
        pause = self.pause_seconds
        self.pause_seconds = min(pause * 2, BUSY_LONGEST_PAUSE_SECONDS)
        return pause
