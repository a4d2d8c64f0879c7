"""``python -m bench.ledger_memory``: Redis memory per relationship of the ledger's records.

Writes N records the way the worker leaves them (through ``Ledger``: take, record, leave) under a
key prefix of its own in Redis database 15, measures them, and deletes them; once as the version
before wrote them (the order key alone) and once with the value kept (``records.py``). Prints,
per relationship, the mean ``MEMORY USAGE`` of a record's key and the growth of the server's
``used_memory`` (which also counts the key's entries in the keyspace and expiry tables).
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime

import redis

from tests.support import REDIS_URL
from worker.events import IdentifierChanged
from worker.processing.ledger import Ledger, Relationship, order_key

#: Relationships written per measurement unless ``--relationships`` says otherwise.
DEFAULT_RELATIONSHIPS = 10_000
#: Records written per ``leave_all`` round trip, as the worker's settler batches them.
BATCH = 100
#: A typical identifier: the sample events' ``ERP-000042``.
VALUE = "ERP-000042"


def _event(index: int) -> IdentifierChanged:
    return IdentifierChanged.model_validate(
        {
            "eventId": str(uuid.uuid4()),
            "eventType": "customer.internal-identifier.changed",
            "occurredAt": datetime.now(UTC).isoformat(),
            "tenant": "portal.example.com",
            "customerId": str(uuid.uuid4()),
            "resellerId": str(uuid.uuid4()) if index % 2 else None,
            "internalIdentifier": VALUE,
        }
    )


def measure(count: int, *, with_values: bool) -> tuple[float, float]:
    """(mean MEMORY USAGE of a record, used_memory growth per record), in bytes."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"ccsync-memory-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(client, prefix=prefix)
    before = int(client.info("memory")["used_memory"])
    keys: list[str] = []
    try:
        for start in range(0, count, BATCH):
            events = [_event(i) for i in range(start, min(count, start + BATCH))]
            wanted = [(Relationship.of(e), e.event_id, None) for e in events]
            holds = [hold for hold in ledger.try_acquire_all(wanted) if hold is not None]
            for hold, event in zip(holds, events, strict=True):
                if with_values:
                    hold.applied(event)
                else:
                    hold.record = order_key(event)
            ledger.leave_all(holds)
            keys += [ledger.applied_key(relationship) for relationship, _, _ in wanted]
        after = int(client.info("memory")["used_memory"])
        usage = sum(int(client.memory_usage(key, samples=0) or 0) for key in keys)
        return usage / count, (after - before) / count
    finally:
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relationships", type=int, default=DEFAULT_RELATIONSHIPS)
    count = parser.parse_args().relationships
    for label, with_values in (("order key alone", False), ("with the value", True)):
        usage, growth = measure(count, with_values=with_values)
        print(
            f"{label:16}  MEMORY USAGE {usage:6.1f} B/relationship  "
            f"used_memory {growth:6.1f} B/relationship  "
            f"({growth * 1_000_000 / 2**20:.0f} MiB per million)"
        )


if __name__ == "__main__":
    main()
