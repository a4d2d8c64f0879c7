"""The sandbox's bounded record of the CloudCockpit calls it received, oldest dropped first.

Records stay compact (raw body bytes, header pairs) and become JSON-ready entries only when read:
200,000 of them must fit in memory, and recording must cost the request almost nothing.
Sequence numbers keep growing across clears and resets, so a ``since`` cursor held by a test or a
benchmark stays meaningful. Not thread-safe: the caller holds ``SandboxState``'s lock.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(slots=True)
class JournalRecord:
    method: str
    path: str
    customer_id: str | None
    # "name: value" lines in one bytes object: a fifth of the memory of a dict of strings.
    headers: bytes
    # Raw bytes, parsed when read; or a form already stripped of its secret (token calls).
    body: bytes | dict[str, str]
    status: int | None
    received_at: float
    responded_at: float
    fault: str | None
    seq: int = 0

    def to_entry(self) -> JournalEntry:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "customerId": self.customer_id,
            "headers": unpack_headers(self.headers),
            "body": _render_body(self.body),
            "status": self.status,
            "receivedAt": self.received_at,
            "respondedAt": self.responded_at,
            "fault": self.fault,
        }


def pack_headers(headers: Mapping[str, str]) -> bytes:
    return "\n".join(
        f"{name}: {value.replace(chr(10), ' ')}" for name, value in headers.items()
    ).encode("utf-8", "surrogateescape")


def unpack_headers(packed: bytes) -> dict[str, str]:
    lines = packed.decode("utf-8", "surrogateescape").split("\n") if packed else []
    return dict(line.split(": ", 1) for line in lines)


def _render_body(body: bytes | dict[str, str]) -> Any:
    if isinstance(body, dict) or not body:
        return body or None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")


class Journal:
    def __init__(self, limit: int) -> None:
        self._records: deque[JournalRecord] = deque(maxlen=limit)
        self._seq = 0

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, record: JournalRecord) -> None:
        self._seq += 1
        record.seq = self._seq
        self._records.append(record)

    def query(
        self, customer_id: str | None = None, since: int | None = None
    ) -> list[JournalRecord]:
        """Matching records, oldest first; the caller renders them outside its lock."""
        records: list[JournalRecord] = []
        # Newest first down to the cursor, so polling with ``since`` costs what it returns.
        for record in reversed(self._records):
            if since is not None and record.seq <= since:
                break
            if customer_id is None or record.customer_id == customer_id:
                records.append(record)
        records.reverse()
        return records

    def clear(self) -> None:
        self._records.clear()
