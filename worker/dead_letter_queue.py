"""Reading the dead-letter queue without taking anything out of it.

Messages are fetched unacknowledged on a channel of their own; closing that channel hands every
one back to the queue, so a crash of the reader cannot lose a dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from worker.constants import (
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPTS,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR,
    HEADER_EVENT_ID,
    HEADER_REASON,
    HEADER_STATUS,
    REASON_DELIVERY_LIMIT,
)
from worker.dead_letters import json_safe_headers


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter as an operator sees it; ``delivery_tag`` is valid on its reading channel."""

    delivery_tag: int
    body: bytes
    content_type: str | None
    headers: Mapping[str, Any]

    @property
    def reason(self) -> str | None:
        reason = self.headers.get(HEADER_REASON)
        if reason is None and _broker_delivery_limit(self.headers):
            return REASON_DELIVERY_LIMIT
        return None if reason is None else str(reason)

    @property
    def event_id(self) -> str | None:
        found = self.headers.get(HEADER_EVENT_ID) or self._body_field("eventId", "id")
        return None if found is None else str(found)

    def _body_field(self, *names: str) -> Any:
        try:
            body = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(body, dict):
            return None
        data = body.get("data")
        if not isinstance(data, dict):
            data = {}
        for name in names:
            if name in body:
                return body[name]
            if name in data:
                return data[name]
        return None

    def summary(self) -> dict[str, Any]:
        """The keys of ``ccsync dlq list --json`` (contract section 6)."""
        return {
            "eventId": self.event_id,
            "tenant": self._body_field("tenant"),
            "customerId": self._body_field("customerId"),
            "resellerId": self._body_field("resellerId"),
            "reason": self.reason,
            "status": self.headers.get(HEADER_STATUS),
            "error": self.headers.get(HEADER_ERROR),
            "attempts": self.headers.get(HEADER_ATTEMPTS),
            "correlationId": self.headers.get(HEADER_CORRELATION_ID),
            "deadLetteredAt": self.headers.get(HEADER_DEAD_LETTERED_AT),
        }


def _broker_delivery_limit(headers: Mapping[str, Any]) -> bool:
    # RabbitMQ's own delivery limit (the backstop on ccsync.events) records it only in x-death.
    deaths = headers.get("x-death") or []
    return any(
        isinstance(death, Mapping) and death.get("reason") in ("delivery_limit", b"delivery_limit")
        for death in deaths
    )


@contextmanager
def browse(connection: Connection) -> Iterator[tuple[Any, list[DeadLetterRecord]]]:
    """Every dead letter, held unacknowledged on a channel; all go back when the block ends.

    Yields the channel too, so a caller may ack (remove) a record it has safely dealt with.
    """
    channel = connection.channel()
    records: list[DeadLetterRecord] = []
    try:
        while True:
            message = channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
            if message is None:
                break
            properties = message.properties
            records.append(
                DeadLetterRecord(
                    delivery_tag=message.delivery_tag,
                    body=bytes(message.body),
                    content_type=properties.get("content_type"),
                    headers=json_safe_headers(properties.get("application_headers") or {}),
                )
            )
        yield channel, records
    finally:
        channel.close()
