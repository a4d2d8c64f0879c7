"""Events as producers write them, in the three encodings of contract section 3."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any


def native(
    customer_id: str | None = None,
    identifier: str | None = "ERP-1",
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    event = {
        "eventId": event_id or str(uuid.uuid4()),
        "eventType": "customer.internal-identifier.changed",
        "occurredAt": (occurred_at or datetime.now(UTC)).isoformat(),
        "customerId": customer_id or str(uuid.uuid4()),
        "resellerId": None,
        "internalIdentifier": identifier,
        "source": "tests",
    }
    event.update(extra)
    return event


def structured(event: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": event["eventType"],
            "id": event["eventId"],
            "source": "tests/crm",
            "time": event["occurredAt"],
            "datacontenttype": "application/json",
            "data": {
                "customerId": event["customerId"],
                "resellerId": event["resellerId"],
                "internalIdentifier": event["internalIdentifier"],
            },
        }
    ).encode()


def binary(event: dict[str, Any], prefix: str = "cloudEvents:") -> tuple[bytes, dict[str, Any]]:
    headers = {
        f"{prefix}specversion": "1.0",
        f"{prefix}type": event["eventType"],
        f"{prefix}id": event["eventId"],
        f"{prefix}source": "tests/erp",
        f"{prefix}time": event["occurredAt"],
    }
    data = {key: event[key] for key in ("customerId", "resellerId", "internalIdentifier")}
    return json.dumps(data).encode(), headers


def later(event: dict[str, Any], seconds: float) -> datetime:
    return datetime.fromisoformat(event["occurredAt"]) + timedelta(seconds=seconds)
