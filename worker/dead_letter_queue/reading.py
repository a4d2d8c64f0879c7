"""Reading the dead-letter queue without taking anything out of it, and without handing
anything back (the one module through which every tool and page reads dead letters).

A pass fetches the dead letters unacknowledged on a channel of its own. When it ends, every one
not removed is put back: published again to the queue (persistent, confirmed) and only then
acked. A pass never hands a message back, because a quorum queue counts every return in its
``x-delivery-count`` and drops a message returned more often than its delivery limit allows
(RabbitMQ 4 sets 20 by default, an operator's policy may set 2, and the queue has nowhere to
dead-letter to): reading any number of times costs no dead letter. Only a reader killed while it
holds them leaves them to the broker, which returns them (one delivery counted); the next pass
puts them back with a count of zero. Killed between a copy's confirm and its original's ack, a
reader leaves a dead letter twice: the next pass recognises the twin by its ``identity`` and
drops it. Whoever removes one (replay, purge, export --remove) acks its delivery tag on that
channel, and only once the dead letter is safe elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final

from kombu import Connection

from worker.amqp.topology import declare_dead_letter_queue
from worker.constants import (
    CLOUDEVENTS_HEADER_PREFIXES,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPTS,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTERED_AT,
    HEADER_DELIVERY_COUNT,
    HEADER_ERROR,
    HEADER_EVENT_ID,
    HEADER_REASON,
    HEADER_REPLAY_COUNT,
    HEADER_STATUS,
)
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.processing.dead_letters import Envelope, json_safe_headers

log = logging.getLogger(__name__)

#: Copies a pass puts back awaiting their confirms at most.
PUT_BACK_WINDOW: Final = 256


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
    #: The other basic properties (message id, timestamp...), kept when the record is put back.
    properties: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def original_headers(self) -> Mapping[str, Any]:
        return self.headers if self.raw_headers is None else self.raw_headers

    @property
    def lasting_headers(self) -> dict[str, Any]:
        """``original_headers`` without the delivery count, which the queue keeps, not the dead
        letter: what a copy of it carries."""
        return {
            key: value
            for key, value in self.original_headers.items()
            if key != HEADER_DELIVERY_COUNT
        }

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


def as_record(message: Any) -> DeadLetterRecord:
    properties = dict(message.properties)
    body = message.body
    encoding = properties.pop("content_encoding", None)
    if isinstance(body, str):
        body = body.encode(encoding or "utf-8")
    raw_headers = dict(properties.pop("application_headers", None) or {})
    content_type = properties.pop("content_type", None)
    return DeadLetterRecord(
        delivery_tag=message.delivery_tag,
        body=bytes(body),
        content_type=content_type,
        headers=json_safe_headers(raw_headers),
        content_encoding=encoding,
        raw_headers=raw_headers,
        properties=properties,
    )


def identity(record: DeadLetterRecord) -> str:
    """A digest of everything a dead letter is, its delivery count aside: a copy put back by a
    reader has the identity of its original, so a pass recognises the twin an interrupted reader
    may have left (the copy confirmed, the original not yet acked)."""
    digest = hashlib.sha256(record.body)
    described = {
        "contentType": record.content_type,
        "contentEncoding": record.content_encoding,
        "properties": record.properties,
        "headers": record.lasting_headers,
    }
    digest.update(json.dumps(described, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


class HeldDeadLetters:
    """A pass over the queue: ``records`` yields each dead letter once, held on ``channel``.

    A dead letter the pass fetched stays held until the pass ends: then whatever was not removed
    is put back (``hold``).
    """

    def __init__(self, connection: Connection) -> None:
        self.channel = reader_channel(connection)
        self._connection = connection
        self._kept: dict[int, DeadLetterRecord] = {}
        self._seen: set[str] = set()
        self._whole = True
        declare_dead_letter_queue(connection)  # a fresh broker has none yet
        first = self.channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
        # The broker's exact count of those still ready after the first, from its basic.get-ok.
        self.total = 0 if first is None else int(first.delivery_info.get("message_count") or 0) + 1
        self.records: Iterator[DeadLetterRecord] = self._fetch(first)

    def _fetch(self, first: Any) -> Iterator[DeadLetterRecord]:
        """The dead letters present when the pass began, at most ``total``: those arriving
        meanwhile (a replayed event failing again, the copies of another reader) wait behind
        them, so one pass never sees one twice."""
        message = first
        for fetched in range(self.total):
            if fetched:
                message = self.channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
            if message is None:
                return
            record = as_record(message)
            key = identity(record)
            if key in self._seen:
                # Its twin is held by this pass, and stays in the queue whatever happens to it.
                self.channel.basic_ack(record.delivery_tag)
                continue
            self._seen.add(key)
            self._kept[record.delivery_tag] = record
            yield record

    def stop(self) -> None:
        """End the pass early (an interruption): ``put_back`` then puts back only what was
        fetched, which goes behind the rest of the queue, and leaves the rest untouched."""
        self._whole = False

    def remove(self, record: DeadLetterRecord) -> None:
        """Take the dead letter out for good: only once it is safe somewhere else."""
        self._kept.pop(record.delivery_tag, None)
        self.channel.basic_ack(record.delivery_tag)

    def put_back(self) -> int:
        """Every dead letter of the pass not removed, those the caller did not read included,
        published again to the queue in the order they were in; each original is acked once its
        copy is confirmed. Returns how many could not be put back: the broker gives those back
        itself when the channel closes (raising their delivery count).

        Never handing a dead letter back is what makes reading free of loss: a quorum queue
        counts each return, and drops a message returned more often than its delivery limit.
        """
        confirms: ConfirmWindow[int] = ConfirmWindow(self._connection)

        def ack(settled: tuple[list[int], list[int]]) -> None:
            for delivery_tag in settled[0]:  # confirmed; the failed ones stay held
                self.remove(self._kept[delivery_tag])

        try:
            # Then the rest of the pass, as it is fetched: the queue keeps its order.
            rest = self.records if self._whole else iter(())
            for record in itertools.chain(list(self._kept.values()), rest):
                confirms.publish(
                    record.delivery_tag,
                    record.envelope(),
                    exchange=DEAD_LETTER_EXCHANGE,
                    routing_key=DEAD_LETTER_QUEUE,
                    headers=record.lasting_headers,
                    properties=record.properties,
                )
                ack(confirms.collect())
                if confirms.pending >= PUT_BACK_WINDOW:
                    ack(confirms.settle())
            ack(confirms.settle())
        finally:
            confirms.close()
        return len(self._kept)


@contextmanager
def hold(connection: Connection) -> Iterator[HeldDeadLetters]:
    """Every dead letter present now, fetched lazily; those not removed are put back at the end.

    A caller that stops early still costs a whole pass: the rest is put back too, so that the
    queue keeps its order and ``--limit`` always means the first ones; unless it calls
    ``stop``, or the block raises.
    """
    held = HeldDeadLetters(connection)
    try:
        yield held
    except BaseException:
        held.stop()  # no time for the rest of the pass: an error or an interruption is waiting
        raise
    finally:
        try:
            left = held.put_back()
        except Exception as exc:  # the connection is gone: the broker gives them back
            log.warning("dead letters not put back (%s); the broker returns them", exc)
        else:
            if left:
                log.warning("%d dead letter(s) not put back; the broker returns them", left)
        # A channel the broker already closed has handed its messages back by itself.
        with contextlib.suppress(Exception):
            held.channel.close()
