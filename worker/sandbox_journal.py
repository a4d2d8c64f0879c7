"""The sandbox's bounded record of the CloudCockpit calls it received, oldest dropped first.

Sequence numbers keep growing across clears and resets, so a ``since`` cursor held by a test or a
benchmark stays meaningful. Not thread-safe: the caller holds ``SandboxState``'s lock.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypedDict


class JournalEntry(TypedDict):
    seq: int
    method: str
    path: str
    customerId: str | None
    headers: dict[str, str]
    body: Any
    status: int | None
    receivedAt: float
    respondedAt: float
    fault: str | None


class Journal:
    def __init__(self, limit: int) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=limit)
        self._seq = 0

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, entry: JournalEntry) -> None:
        self._seq += 1
        entry["seq"] = self._seq
        self._entries.append(entry)

    def query(self, customer_id: str | None = None, since: int | None = None) -> list[JournalEntry]:
        entries: list[JournalEntry] = []
        # Newest first until the cursor, so polling with ``since`` costs what it returns.
        for entry in reversed(self._entries):
            if since is not None and entry["seq"] <= since:
                break
            if customer_id is None or entry["customerId"] == customer_id:
                entries.append(entry)
        entries.reverse()
        return entries

    def clear(self) -> None:
        self._entries.clear()
