"""Event in: consume producers' plain messages, validate them, apply each in the worker's pool.

A Celery ``ConsumerStep``: its callback runs in the worker's event loop, so it only validates and
hands the event to the worker's pool, where the body of the ``apply_event`` task (``Applier``)
makes the first attempt. The first attempt needs no second trip through the broker; retries
travel as ``apply_event`` task messages through the delay ladder.

The raw message is acknowledged only once its outcome is settled: applied or skipped, or its
retry message or dead letter confirmed by the broker. A crash at any point loses nothing: the
message comes back, and the queue counts its deliveries up to the delivery limit.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from kombu import Connection, Consumer, Producer
from kombu.common import ignore_errors
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
# Beyond the call's own timeout: time to publish its retry or dead letter and record it.
SHUTDOWN_GRACE_SECONDS = 15.0


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
        self._outcomes = SettledMessages()

    def get_consumers(self, channel: Any) -> list[Consumer]:
        # The body exactly as published: py-amqp would otherwise decode it to text when the
        # producer set a content encoding, and a dead letter must keep the original bytes.
        channel.auto_decode = False
        return [
            Consumer(
                channel,
                queues=[events_queue],
                on_message=self.on_message,
                on_decode_error=self.on_undecodable,
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

    def stop(self, c: Any) -> None:
        """Warm shutdown: take no more events, let the calls in flight finish, settle them."""
        for consumer in self.consumers or []:
            ignore_errors(c.connection, consumer.cancel)
        grace = self.app.ccsync_settings.http_timeout + SHUTDOWN_GRACE_SECONDS
        if not self._outcomes.wait_idle(grace):
            log.warning("shutdown: calls still in flight after %.0fs are left to redelivery", grace)
        # The event loop has stopped: this thread alone uses the channel now.
        self._outcomes.settle(c.connection_errors)
        super().stop(c)

    def shutdown(self, c: Any) -> None:
        self._close_publisher()
        super().shutdown(c)

    def on_undecodable(self, message: Message, exc: Exception) -> None:
        """kombu could not even decompress it: dead-letter the raw bytes rather than crash."""
        try:
            self._dead_letter(
                self._envelope(message),
                DeadLetter(REASON_INVALID_EVENT, f"undecodable message: {type(exc).__name__}", 0),
            )
            message.ack()
        except Exception:
            log.exception("could not dead-letter an undecodable message; it is requeued")
            self._close_publisher()
            ignore_errors(self._celery_consumer.connection, message.requeue)

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

    @staticmethod
    def _envelope(message: Message) -> Envelope:
        body = message.body or b""
        headers = dict(message.headers or {})
        if headers.get("compression") and not message.errors:
            # kombu already decompressed the body: the envelope holds it as it is now.
            del headers["compression"]
        return Envelope(
            body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
            content_type=message.content_type or None,
            content_encoding=message.content_encoding or None,
            headers=headers,
        )

    def _take(self, message: Message) -> None:
        metrics.EVENTS_RECEIVED.inc()
        envelope = self._envelope(message)
        deliveries = delivery_count(message)
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
        self._outcomes.started()
        self._celery_consumer.pool.apply_async(
            self._first_attempt, args=(Attempt.first(event, envelope), message)
        )

    def _first_attempt(self, attempt: Attempt, message: Message) -> None:
        """In a pool thread. The ack (or requeue) is left to the loop, owner of the channel."""
        try:
            # The task's own body, without Celery's eager tracer around it: measured in bench/,
            # the tracer and the task's JSON round trip cost a fifth of the worker's CPU.
            self.app.runtime.applier.apply(attempt)
            done = True
        except Exception:
            log.exception("event %s: no outcome could be recorded", attempt.event.event_id)
            done = False
        consumer = self._celery_consumer
        self._outcomes.finished(message, done)
        consumer.call_soon(self._outcomes.settle, consumer.connection_errors)

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


class SettledMessages:
    """First attempts in flight, and the messages whose outcome is settled, waiting to be acked.

    Pool threads report here; the event loop thread (or ``stop``, once the loop is over) acks,
    since a channel must only be used by one thread.
    """

    def __init__(self) -> None:
        self._done: queue.SimpleQueue[tuple[Message, bool]] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._in_flight = 0

    def started(self) -> None:
        with self._idle:
            self._in_flight += 1

    def finished(self, message: Message, done: bool) -> None:
        self._done.put((message, done))
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def settle(self, connection_errors: tuple[type[BaseException], ...]) -> None:
        while True:
            try:
                message, done = self._done.get_nowait()
            except queue.Empty:
                return
            if done:
                message.ack_log_error(log, connection_errors)
            else:
                # Back to the queue, which counts the delivery: a message that keeps failing
                # ends as delivery-limit.
                message.reject_log_error(log, connection_errors, requeue=True)


def delivery_count(message: Message) -> int:
    """Deliveries so far, as the quorum queue counts them. The queue sets the header only on a
    redelivery: on a first delivery it can only be the producer's, and counts for nothing."""
    if not (message.delivery_info or {}).get("redelivered"):
        return 0
    count = (message.headers or {}).get("x-delivery-count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


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
