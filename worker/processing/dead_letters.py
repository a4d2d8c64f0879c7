"""Dead letters: the original message, unchanged, plus what an operator needs (contract §7)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.constants import (
    BROKER_HEADERS,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPTS,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR,
    HEADER_EVENT_ID,
    HEADER_FIRST_ATTEMPT_AT,
    HEADER_PREFIX,
    HEADER_REASON,
    HEADER_REPLAY_COUNT,
    HEADER_REPLAYED_AT,
    HEADER_STATUS,
    MAX_ERROR_CHARS,
)
from worker.processing.mandatory import refused_if_returned


@dataclass(frozen=True)
class Envelope:
    """The message as the producer sent it: what a dead letter must keep, byte for byte."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form for a task message: bodies of valid events are UTF-8 JSON.

        The headers are tagged (``encode_header_value``), so ``from_wire`` gives back the same
        AMQP types: a dead letter made after a retry keeps the producer's headers as sent.
        """
        return {
            "body": self.body.decode("utf-8"),
            "contentType": self.content_type,
            "contentEncoding": self.content_encoding,
            "headers": encode_header_value(dict(self.headers)),
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Envelope:
        """The envelope ``to_wire`` was made from, header types included."""
        headers = decode_header_value(wire.get("headers") or {})
        return cls(
            body=str(wire["body"]).encode("utf-8"),
            content_type=wire.get("contentType"),
            content_encoding=wire.get("contentEncoding"),
            headers=dict(headers) if isinstance(headers, dict) else {},
        )


def encode_header_value(value: Any) -> Any:
    """An AMQP header value as JSON, tagging what JSON cannot hold as is.

    ``{"$timestamp": ISO}``, ``{"$base64": ...}`` and ``{"$decimal": ...}`` stand for a
    timestamp, bytes and a decimal; tables and arrays are encoded item by item.
    """
    if isinstance(value, datetime):
        return {"$timestamp": value.isoformat()}
    if isinstance(value, bytes | bytearray):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Mapping):
        return {_text(key): encode_header_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_header_value(item) for item in value]
    return value


def decode_header_value(value: Any) -> Any:
    """The AMQP header value ``encode_header_value`` made ``value`` from."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, text),) = value.items()
            if tag == "$timestamp" and isinstance(text, str):
                return datetime.fromisoformat(text)
            if tag == "$base64" and isinstance(text, str):
                return base64.b64decode(text, validate=True)
            if tag == "$decimal" and isinstance(text, str):
                return Decimal(text)
        return {key: decode_header_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_header_value(item) for item in value]
    return value


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    error: str
    attempts: int
    event_id: str | None = None
    correlation_id: str | None = None
    status: int | None = None
    first_attempt_at: str | None = None

    def headers(self, now: datetime | None = None) -> dict[str, Any]:
        stamped = (now or datetime.now(UTC)).isoformat()
        headers: dict[str, Any] = {
            HEADER_REASON: self.reason,
            HEADER_ERROR: self.error[:MAX_ERROR_CHARS],
            HEADER_ATTEMPTS: self.attempts,
            HEADER_DEAD_LETTERED_AT: stamped,
            HEADER_FIRST_ATTEMPT_AT: self.first_attempt_at or stamped,
        }
        optional = {
            HEADER_STATUS: self.status,
            HEADER_EVENT_ID: self.event_id,
            HEADER_CORRELATION_ID: self.correlation_id,
        }
        headers.update({key: value for key, value in optional.items() if value is not None})
        return headers


def publish_dead_letter(channel: Any, *, envelope: Envelope, letter: DeadLetter) -> None:
    """Publish on a confirming channel; only after this returns may the source message be acked.

    Mandatory: raises ``Unroutable`` when no queue took the dead letter (see ``mandatory``).

    Goes below kombu's Producer on purpose: kombu would label a body without content type
    ``application/data``, and the dead letter must keep the producer's properties as they were.
    """
    headers = {**_without_ccsync_headers(envelope.headers), **letter.headers()}
    message = channel.prepare_message(
        envelope.body,
        content_type=envelope.content_type,
        content_encoding=envelope.content_encoding,
        headers=headers,
        properties={"delivery_mode": 2},
    )
    with refused_if_returned(channel, "dead letter"):
        channel.basic_publish(
            message, exchange=DEAD_LETTER_EXCHANGE, routing_key=DEAD_LETTER_QUEUE, mandatory=True
        )


def _without_ccsync_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    # A replayed event that fails again gets fresh ccsync headers, not two generations mixed.
    return {
        key: value
        for key, value in headers.items()
        if not isinstance(key, str)
        or not key.startswith(HEADER_PREFIX)
        or key in (HEADER_REPLAYED_AT, HEADER_REPLAY_COUNT)
        if key not in BROKER_HEADERS
    }


#: AMQP tables may nest without end; deeper than this, a header is kept as text.
MAX_HEADER_DEPTH = 16


def json_safe_headers(headers: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """AMQP header values made JSON-safe (bytes to text, timestamps to RFC 3339)."""
    return {_text(key): _json_safe(value, depth + 1) for key, value in headers.items()}


def _text(key: Any) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _json_safe(value: Any, depth: int) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple) and depth > MAX_HEADER_DEPTH:
        return "(nested too deeply)"
    if isinstance(value, Mapping):
        return json_safe_headers(value, depth)
    if isinstance(value, list | tuple):
        return [_json_safe(item, depth + 1) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
