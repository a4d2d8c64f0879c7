"""Publishing events the way a producer would: plain AMQP, persistent, confirmed (contract §2-3)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from amqp.exceptions import ChannelError
from kombu import Connection
from pydantic import ValidationError

from worker.amqp.topology import events_exchange
from worker.constants import (
    CLOUDEVENTS_CONTENT_TYPE,
    EVENT_ROUTING_KEY,
    EVENT_TYPE,
    EVENTS_EXCHANGE,
)
from worker.events import IdentifierChanged, describe_validation_error
from worker.exceptions import InputError, NoQueueBound

#: The reply code of a mandatory message that no queue took.
NO_ROUTE = 312


class Encoding(StrEnum):
    NATIVE = "native"
    STRUCTURED = "cloudevents-structured"
    BINARY = "cloudevents-binary"


def new_event(
    customer_id: uuid.UUID | str,
    internal_identifier: str | None,
    *,
    tenant: str | None = None,
    reseller_id: uuid.UUID | str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "ccsync-publish",
) -> dict[str, Any]:
    """A native event (contract §3) with a fresh eventId and the current time unless given."""
    event: dict[str, Any] = {
        "eventId": event_id or str(uuid.uuid4()),
        "eventType": EVENT_TYPE,
        "occurredAt": (occurred_at or datetime.now(UTC)).isoformat(),
        "customerId": str(customer_id),
        "resellerId": str(reseller_id) if reseller_id else None,
        "internalIdentifier": internal_identifier,
        "source": source,
    }
    if tenant:
        event["tenant"] = tenant
    return event


def encode(
    event: Mapping[str, Any], encoding: Encoding
) -> tuple[bytes, str | None, dict[str, Any]]:
    """Body, content type and application headers of a native event in the chosen encoding."""
    if encoding is Encoding.NATIVE:
        return json.dumps(event).encode(), "application/json", {}
    data = {
        key: event.get(key) for key in ("tenant", "customerId", "resellerId", "internalIdentifier")
    }
    if data["tenant"] is None:
        del data["tenant"]
    attributes = {
        "specversion": "1.0",
        "type": event["eventType"],
        "id": event["eventId"],
        "source": event.get("source") or "ccsync-publish",
        "time": event["occurredAt"],
    }
    if encoding is Encoding.STRUCTURED:
        body = {**attributes, "datacontenttype": "application/json", "data": data}
        return json.dumps(body).encode(), CLOUDEVENTS_CONTENT_TYPE, {}
    headers = {f"cloudEvents:{key}": value for key, value in attributes.items()}
    return json.dumps(data).encode(), "application/json", headers


def publish_raw(
    connection: Connection,
    messages: Iterable[tuple[bytes, str | None, Mapping[str, Any]]],
    *,
    routing_key: str = EVENT_ROUTING_KEY,
) -> int:
    """Publish (body, content type, headers) triples, each confirmed by the broker, with
    ``routing_key`` (the live lane's, or ``BACKFILL_ROUTING_KEY`` for bulk traffic)."""
    channel = connection.channel()
    channel.confirm_select()
    exchange = events_exchange(channel)
    exchange.declare()
    count = 0
    try:
        for body, content_type, headers in messages:
            message = channel.prepare_message(
                body,
                content_type=content_type,
                headers=dict(headers),
                properties={"delivery_mode": 2},
            )
            try:
                # mandatory: the broker confirms a message no queue takes, and drops it.
                channel.basic_publish_confirm(
                    message, exchange=EVENTS_EXCHANGE, routing_key=routing_key, mandatory=True
                )
            except ChannelError as exc:
                if getattr(exc, "reply_code", None) != NO_ROUTE:
                    raise
                raise NoQueueBound(
                    f"no queue is bound to {EVENTS_EXCHANGE} for {routing_key}: start "
                    f"'ccsync worker' or 'ccsync topology --apply' first ({count} published)"
                ) from None
            count += 1
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return count


def publish_events(
    connection: Connection,
    events: Iterable[Mapping[str, Any]],
    encoding: Encoding,
    *,
    routing_key: str = EVENT_ROUTING_KEY,
) -> int:
    return publish_raw(
        connection, (encode(event, encoding) for event in events), routing_key=routing_key
    )


def read_event_file(path: Path) -> list[dict[str, Any]]:
    """The events of the file at ``path`` (see ``read_event_text``).

    Raises ``InputError`` naming the file when it cannot be read, is not UTF-8, is not JSON (nor
    JSON lines), or holds something other than JSON objects.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return read_event_text(text, where=str(path))


def read_event_text(text: str, *, where: str) -> list[dict[str, Any]]:
    """The events of ``text`` (see ``read_events``); ``InputError`` naming ``where`` and the line
    when it is not JSON (nor JSON lines) or holds something other than JSON objects."""
    try:
        events = list(read_events(text))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}: neither JSON nor JSON lines (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})"
        ) from None
    for number, event in enumerate(events, 1):
        if not isinstance(event, dict):
            raise InputError(f"{where}: event {number} is not a JSON object")
    return events


def check_native_events(events: Iterable[Mapping[str, Any]], *, where: str) -> None:
    """Raises ``InputError`` naming the first event (by number) the worker would dead-letter as
    invalid, and each failing field; quotes no value."""
    for number, event in enumerate(events, 1):
        try:
            IdentifierChanged.model_validate(event)
        except ValidationError as exc:
            raise InputError(
                f"{where}: event {number} is invalid, nothing was published: "
                f"{describe_validation_error(exc)}"
            ) from None


def read_events(text: str) -> Iterator[dict[str, Any]]:
    """Events from a JSON document (one object or a list) or from JSON lines.

    Raises ``json.JSONDecodeError`` whose line and column are those of ``text``: of the document
    when not even its first line is JSON, else of the first line that is not.
    """
    if not text.strip():
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole:
        yield from _json_lines(text, whole)
        return
    if isinstance(document, list):
        yield from document
    else:
        yield document


def _json_lines(text: str, whole: json.JSONDecodeError) -> Iterator[Any]:
    offset = 0
    first = True
    for line in text.splitlines(keepends=True):
        if line.strip():
            try:
                value = json.loads(line.rstrip("\r\n"))  # an error at its end stays on it
            except json.JSONDecodeError as exc:
                if first:  # a JSON document that is broken, more likely than broken JSON lines
                    raise whole from None
                raise json.JSONDecodeError(exc.msg, text, offset + exc.pos) from None
            first = False
            yield value
        offset += len(line)
