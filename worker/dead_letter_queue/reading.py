"""Reading the dead-letter queue without taking anything out of it.

Messages are fetched unacknowledged on a channel of their own; closing that channel hands every
one back to the queue, so a crash of the reader cannot lose a dead letter. The queue is a quorum
queue: each pass raises every dead letter's ``x-delivery-count`` by one, which is all it does (the
queue has no delivery limit and no dead-lettering of its own, and the count is dropped from a
replayed or exported dead letter). Whoever removes one
(replay, purge, export --remove) acks its delivery tag on that channel, and only once the dead
letter is safe elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from kombu import Connection

from worker.amqp.topology import dead_letter_queue
from worker.constants import (
    CLOUDEVENTS_HEADER_PREFIXES,
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPTS,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR,
    HEADER_EVENT_ID,
    HEADER_REASON,
    HEADER_REPLAY_COUNT,
    HEADER_STATUS,
)
from worker.exceptions import CcsyncError
from worker.processing.dead_letters import Envelope, json_safe_headers


class DeadLetterError(CcsyncError):
    """An operation on dead letters could not be done; what was not done stays in the queue."""


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter as an operator sees it; ``delivery_tag`` is valid on its reading channel.

    ``headers`` is the JSON-safe view; ``raw_headers`` the values as the broker gave them, which
    is what a replay or an export must carry on (a timestamp stays a timestamp).
    """

    delivery_tag: int
    body: bytes
    content_type: str | None
    headers: Mapping[str, Any]
    content_encoding: str | None = None
    raw_headers: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def original_headers(self) -> Mapping[str, Any]:
        return self.headers if self.raw_headers is None else self.raw_headers

    def envelope(self) -> Envelope:
        return Envelope(self.body, self.content_type, self.content_encoding, self.original_headers)

    @property
    def reason(self) -> str | None:
        reason = self.headers.get(HEADER_REASON)
        return None if reason is None else str(reason)

    @property
    def event_id(self) -> str | None:
        found = self.headers.get(HEADER_EVENT_ID)
        if found is None:
            # Binary CloudEvents carry the id in the headers; their body is only ``data``.
            for prefix in CLOUDEVENTS_HEADER_PREFIXES:
                found = found or self.headers.get(f"{prefix}id")
        if found is None:
            found = self._body_field("eventId", "id")
        return None if found is None else str(found)

    @property
    def tenant(self) -> str | None:
        return _text(self._body_field("tenant"))

    @property
    def customer_id(self) -> str | None:
        return _text(self._body_field("customerId"))

    @property
    def reseller_id(self) -> str | None:
        return _text(self._body_field("resellerId"))

    @property
    def status(self) -> int | None:
        value = self.headers.get(HEADER_STATUS)
        try:
            return None if value is None else int(value)
        except (TypeError, ValueError):
            return None

    @property
    def error(self) -> str | None:
        return _text(self.headers.get(HEADER_ERROR))

    @property
    def correlation_id(self) -> str | None:
        return _text(self.headers.get(HEADER_CORRELATION_ID))

    @property
    def replay_count(self) -> int:
        try:
            return int(self.headers.get(HEADER_REPLAY_COUNT) or 0)
        except (TypeError, ValueError):
            return 0

    @cached_property
    def dead_lettered_at(self) -> datetime | None:
        """When it was dead-lettered, from ccsync's header."""
        stamped = self.headers.get(HEADER_DEAD_LETTERED_AT)
        if not isinstance(stamped, str):
            return None
        try:
            moment = datetime.fromisoformat(stamped)
        except ValueError:
            return None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    @cached_property
    def _body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.body)
        except (ValueError, RecursionError):
            return {}
        return body if isinstance(body, dict) else {}

    def _body_field(self, *names: str) -> Any:
        # Native events and binary CloudEvents hold the field at the top, structured ones in data.
        body = self._body
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
        moment = self.dead_lettered_at
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
            "deadLetteredAt": self.headers.get(HEADER_DEAD_LETTERED_AT)
            or (None if moment is None else moment.isoformat()),
        }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def reader_channel(connection: Connection) -> Any:
    """A channel whose deliveries keep their body bytes exactly as published."""
    channel = connection.channel()
    # py-amqp would otherwise turn the body of a message with a content encoding into str.
    channel.auto_decode = False
    return channel


def fetch(channel: Any, count: int) -> Iterator[DeadLetterRecord]:
    """At most ``count`` dead letters, each held unacknowledged until acked or the channel closes.

    The bound is the queue depth taken before the first fetch: dead letters arriving meanwhile
    (a replayed event failing again, say) wait behind it, so one pass never sees one twice.
    """
    for _ in range(count):
        message = channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
        if message is None:
            return
        yield _record(message)


def _record(message: Any) -> DeadLetterRecord:
    properties = message.properties
    body = message.body
    encoding = properties.get("content_encoding")
    if isinstance(body, str):
        body = body.encode(encoding or "utf-8")
    raw_headers = dict(properties.get("application_headers") or {})
    return DeadLetterRecord(
        delivery_tag=message.delivery_tag,
        body=bytes(body),
        content_type=properties.get("content_type"),
        headers=json_safe_headers(raw_headers),
        content_encoding=encoding,
        raw_headers=raw_headers,
    )


def _first_and_total(channel: Any) -> tuple[DeadLetterRecord | None, int]:
    """The first dead letter of a pass and how many there are now: the broker's exact count of
    those still ready after it, from its ``basic.get-ok``, plus itself."""
    # Declared (idempotently): a fresh broker has none yet. Not counted by its statistics, which
    # a quorum queue updates late (messages a reader just handed back may be missing).
    dead_letter_queue(channel).declare()
    message = channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
    if message is None:
        return None, 0
    return _record(message), int(message.delivery_info.get("message_count") or 0) + 1


@dataclass
class HeldDeadLetters:
    """A pass over the queue: ``records`` yields each dead letter once, held on ``channel``."""

    channel: Any
    total: int
    records: Iterator[DeadLetterRecord]

    def remove(self, record: DeadLetterRecord) -> None:
        """Take the dead letter out for good: only once it is safe somewhere else."""
        self.channel.basic_ack(record.delivery_tag)


@contextmanager
def hold(connection: Connection) -> Iterator[HeldDeadLetters]:
    """Every dead letter present now, fetched lazily; those not removed go back at the end."""
    channel = reader_channel(connection)
    try:
        first, total = _first_and_total(channel)
        records = fetch(channel, total - 1)
        yield HeldDeadLetters(
            channel, total, records if first is None else itertools.chain([first], records)
        )
    finally:
        # A channel the broker already closed has handed its messages back by itself.
        with contextlib.suppress(Exception):
            channel.close()


@contextmanager
def browse(connection: Connection) -> Iterator[tuple[Any, list[DeadLetterRecord]]]:
    """Every dead letter, held unacknowledged on a channel; all go back when the block ends.

    Yields the channel too, so a caller may ack (remove) a record it has safely dealt with.
    """
    with hold(connection) as held:
        yield held.channel, list(held.records)
