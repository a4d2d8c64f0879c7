"""Event in: consume producers' plain messages, validate them, run the task on each.

A Celery ``ConsumerStep``: its callback runs in the worker's event loop, so it only validates and
hands the event to the worker's pool, where the ``apply_event`` task runs its first attempt. The
first attempt needs no second trip through the broker; retries travel as task messages.

The raw message is acknowledged only once its outcome is settled: applied or skipped, or its
retry message or dead letter confirmed by the broker. A crash at any point loses nothing: the
message comes back, and the queue counts its deliveries up to the delivery limit.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from kombu import Connection, Consumer, Producer
from kombu.message import Message

from worker import metrics
from worker.apply import Attempt
from worker.constants import (
    DELIVERY_LIMIT,
    REASON_DELIVERY_LIMIT,
    REASON_INVALID_EVENT,
)
from worker.dead_letters import DeadLetter, Envelope, publish_dead_letter
from worker.events import IdentifierChanged, decode_event
from worker.exceptions import InvalidEvent
from worker.topology import events_queue

if TYPE_CHECKING:
    from worker.app import CcsyncCelery

log = logging.getLogger(__name__)

# Events waiting for a free thread, per thread: enough to keep every thread busy between broker
# round trips, few enough that a crash redelivers little.
PREFETCH_PER_THREAD = 2
SHUTDOWN_CHECK_SECONDS = 0.5


def _nothing() -> None:
    pass


class EventIntake(bootsteps.ConsumerStep):  # type: ignore[misc]
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app: CcsyncCelery = parent.app
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._ticking_hub: Any = None
        self._celery_consumer: Any = None

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [
            Consumer(
                channel,
                queues=[events_queue],
                on_message=self.on_message,
                prefetch_count=PREFETCH_PER_THREAD * self._celery_consumer.pool.limit,
                no_ack=False,
            )
        ]

    def start(self, c: Any) -> None:
        self._celery_consumer = c
        super().start(c)
        self.app.consumer_switch.attach(c, self.consumers)
        if c.hub is not None and c.hub is not self._ticking_hub:
            self._ticking_hub = c.hub
            # A signal does not interrupt the loop's poll; without a timer an idle worker would
            # notice SIGTERM only when the poll times out (about 10 s).
            c.hub.call_repeatedly(SHUTDOWN_CHECK_SECONDS, _nothing)

    def shutdown(self, c: Any) -> None:
        self._close_publisher()
        super().shutdown(c)

    def on_message(self, message: Message) -> None:
        try:
            self._take(message)
        except Exception:
            # Never let an exception out: Celery would stop the whole worker. The message goes
            # back to the queue, which counts its deliveries up to the delivery limit.
            log.exception("intake failed; the message is requeued")
            self._close_publisher()
            try:
                message.requeue()
            except Exception:
                log.exception("requeue failed; the broker will redeliver the message")

    def _take(self, message: Message) -> None:
        metrics.EVENTS_RECEIVED.inc()
        envelope = Envelope(
            body=bytes(message.body),
            content_type=message.content_type or None,
            content_encoding=message.content_encoding or None,
            headers=dict(message.headers or {}),
        )
        deliveries = int(envelope.headers.get("x-delivery-count") or 0)
        if deliveries >= DELIVERY_LIMIT:
            log.error("message delivered %d times without an outcome: dead-lettered", deliveries)
            self._dead_letter(
                envelope,
                DeadLetter(
                    REASON_DELIVERY_LIMIT,
                    f"delivered {deliveries} times without an outcome: "
                    "the worker crashed or hung on it",
                    attempts=deliveries,
                    event_id=guess_event_id(envelope.body),
                ),
            )
            message.ack()
            return
        try:
            event = self._validate(envelope)
        except InvalidEvent as exc:
            log.warning("invalid event dead-lettered: %s", exc)
            self._dead_letter(
                envelope,
                DeadLetter(
                    REASON_INVALID_EVENT,
                    str(exc),
                    attempts=0,
                    event_id=guess_event_id(envelope.body),
                ),
            )
            message.ack()
            return
        self._celery_consumer.pool.apply_async(
            self._first_attempt, args=(Attempt.first(event, envelope), message)
        )

    def _first_attempt(self, attempt: Attempt, message: Message) -> None:
        """In a pool thread; acks or requeues through the event loop, which owns the channel."""
        consumer = self._celery_consumer
        errors = consumer.connection_errors
        try:
            settled = self.app.apply_event_task.apply(
                kwargs=attempt.to_task_kwargs(), throw=True
            ).successful()
        except Exception:
            log.exception("event %s: no outcome could be recorded", attempt.event.event_id)
            settled = False
        if settled:
            consumer.call_soon(message.ack_log_error, log, errors)
        else:
            consumer.call_soon(message.reject_log_error, log, errors, requeue=True)

    def _validate(self, envelope: Envelope) -> IdentifierChanged:
        limit = self.app.ccsync_settings.max_event_bytes
        if len(envelope.body) > limit:
            raise InvalidEvent(f"body is {len(envelope.body)} bytes; the limit is {limit}")
        event = decode_event(envelope.body, envelope.content_type, envelope.headers)
        if event.tenant is None:
            default_tenant = self.app.ccsync_settings.tenant
            if default_tenant is None:
                raise InvalidEvent("tenant: missing, and CLOUDCOCKPIT_TENANT is not set")
            event = event.model_copy(update={"tenant": default_tenant})
        return event

    def _dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None:
        publish_dead_letter(self._publisher().channel, envelope, letter)
        metrics.EVENTS_DEAD_LETTERED.labels(letter.reason).inc()

    def _publisher(self) -> Producer:
        if self._producer is None:
            self._connection = self.app.connection_for_write()
            self._producer = Producer(self._connection.default_channel)
        return self._producer

    def _close_publisher(self) -> None:
        if self._connection is not None:
            self._connection.release()
        self._connection = self._producer = None


def guess_event_id(body: bytes) -> str | None:
    """The eventId (or CloudEvents id) of a message that failed validation, if it has one."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict):
        found = value.get("eventId", value.get("id"))
        if isinstance(found, str) and 0 < len(found) <= 200:
            return found
    return None
