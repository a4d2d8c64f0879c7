"""What the ledger stores per relationship: a record of the newest event applied.

A record is one Redis string, ``<order key>\\0<payload>``, where the payload is the JSON array
``[internalIdentifier, appliedAt]`` (the value the event applied, null included, and the worker's
clock when CloudCockpit accepted it, in seconds since the epoch). Records written before values
were kept are the order key alone; they still order events, but say nothing of the value.

The separator is NUL, the smallest byte, so records compare byte by byte as their order keys do
(the order key of an event whose id holds a NUL aside). The split is at the last NUL when what
follows it is bracketed (``[`` … ``]``): JSON text never holds a raw NUL, so a payload is always
found, and ``leave.lua`` splits the same way before it compares. One string per relationship, as
before, keeps the scripts' keys, their round trips and a worker of the version before (which reads
a record as a longer order key and still orders by it) unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Between a record's order key and its payload.
RECORD_SEPARATOR = "\x00"

_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_ONE_DAY_MICROS = 86_400_000_000
_MICROS_DIGITS = 20


@dataclass(frozen=True)
class AppliedRecord:
    """The newest event applied to a relationship, as the ledger holds it.

    ``value_known`` is False for a record written before values were kept (and for a payload that
    cannot be read): ``value`` and ``applied_at`` are None then and say nothing.
    """

    order_key: str
    value: str | None = None
    applied_at: float | None = None
    value_known: bool = False

    @property
    def event_id(self) -> str:
        return self.order_key.partition("|")[2]

    @property
    def occurred_at(self) -> datetime | None:
        """The applied event's ``occurredAt`` in UTC, read back from its order key."""
        digits = self.order_key[:_MICROS_DIGITS]
        if not digits.isdigit():
            return None
        micros = int(digits) - _ONE_DAY_MICROS
        return _YEAR_ONE + timedelta(microseconds=micros)


def format_record(order_key: str, value: str | None, *, applied_at: float) -> str:
    """The record of an event of ``order_key`` that applied ``value`` at ``applied_at``."""
    payload = json.dumps([value, round(applied_at, 3)], ensure_ascii=False, separators=(",", ":"))
    return f"{order_key}{RECORD_SEPARATOR}{payload}"


def split_record(raw: str) -> tuple[str, str | None]:
    """The order key and the payload (None for a record of the order key alone)."""
    cut = raw.rfind(RECORD_SEPARATOR)
    if cut < 0:
        return raw, None
    payload = raw[cut + 1 :]
    if len(payload) < 2 or payload[0] != "[" or payload[-1] != "]":
        return raw, None
    return raw[:cut], payload


def record_order_key(raw: str | bytes | None) -> str | None:
    """The order key of a record as Redis returns it (None: nothing applied yet)."""
    if raw is None:
        return None
    return split_record(raw.decode() if isinstance(raw, bytes) else raw)[0]


def parse_record(raw: str | bytes) -> AppliedRecord:
    """A record as Redis returns it, read in full."""
    key, payload = split_record(raw.decode() if isinstance(raw, bytes) else raw)
    if payload is None:
        return AppliedRecord(key)
    try:
        value, applied_at = json.loads(payload)
    except (ValueError, TypeError):
        return AppliedRecord(key)
    if not (value is None or isinstance(value, str)) or not isinstance(applied_at, int | float):
        return AppliedRecord(key)
    return AppliedRecord(key, value, float(applied_at), value_known=True)
