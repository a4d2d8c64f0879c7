"""Event in: consume producers' plain messages, validate them, apply each first attempt.

A Celery ``ConsumerStep``: its callback runs in the worker's event loop, so it only validates the
event (an invalid one is dead-lettered here) and hands its first attempt to the pipeline
(``pipeline``: gate, caller, settler, each in a thread of its own), which calls back to have the
message acked once its outcome is settled. The first attempt needs no second trip through the
broker; retries travel as ``apply_event`` task messages through the delay ladder.

The raw message is acknowledged only once its outcome is settled: applied or skipped, or its
retry message or dead letter confirmed by the broker. A crash at any point loses nothing: the
message comes back, and the queue counts its deliveries up to the delivery limit.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import bootsteps
from kombu import Connection, Consumer, Producer, Queue
from kombu.common import ignore_errors
from kombu.message import Message

from worker.amqp.topology import backfill_queue, events_queue, publish_declaring_topology
from worker.cloudcockpit.client import lane_connections
from worker.constants import (
    BACKFILL_ROUTING_KEY,
    DELIVERY_LIMIT,
    EVENTS_QUEUE,
    HEADER_DELIVERY_COUNT,
    REASON_DELIVERY_LIMIT,
    REASON_INVALID_EVENT,
)
from worker.events import IdentifierChanged, decode_event, reject_if_ahead
from worker.exceptions import InvalidEvent, LedgerUnavailable
from worker.observability import metrics, tracing
from worker.observability.endpoints import Liveness
from worker.processing.applier import Applier
from worker.processing.attempts import Attempt
from worker.processing.dead_letters import DeadLetter, Envelope, publish_dead_letter
from worker.processing.solo_runs import SoloRuns, message_key
from worker.runtime.consumer_switch import ConsumerSwitch
from worker.runtime.pipeline import Pipeline
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Events in hand per call in flight: each call's lane finds its next event held and ready while
#: the settler still concludes the last; a crash redelivers few.
PREFETCH_PER_CALL = 2
#: Backfill events in hand per call in flight: enough to keep every lane busy, few enough that a
#: live event finds little bulk traffic ahead of it in the pipeline.
BACKFILL_PREFETCH_PER_CALL = 1
#: Seconds between two wake-ups of the event loop, so that it notices a shutdown signal.
SHUTDOWN_CHECK_SECONDS = 0.5
#: Seconds a warm shutdown waits beyond the call timeout, to publish and record the outcomes.
SHUTDOWN_GRACE_SECONDS = 15.0


def _nothing() -> None:
    pass


class IntakeServices(Protocol):
    """What the intake needs from the worker that runs it; the Celery app provides it."""

    @property
    def ccsync_settings(self) -> Settings:
        """The size limit of an event, the tolerated clock skew, the default tenant, the call
        timeout."""

    @property
    def consumer_switch(self) -> ConsumerSwitch:
        """Told of the intake's consumers on each (re)connection, to pause them in an outage."""

    @property
    def applier(self) -> Applier:
        """The same applier on every read, made on the first, in the worker process."""

    @property
    def calls_in_flight(self) -> int:
        """First attempts' calls to CloudCockpit in flight at once (``--concurrency``)."""

    @property
    def liveness(self) -> Liveness:
        """What /livez asks: the pipeline's stages join it."""

    def connection_for_write(self) -> Connection:
        """A broker connection of the intake's own, for dead letters; the intake releases it."""


@dataclass
class _Run:
    """A redelivered message's run, and how it is counted (``SoloRuns``)."""

    message: Message
    key: str
    # False when Redis did not answer: nothing was counted, so nothing is struck off.
    counted: bool


class EventIntake(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Celery makes the step with its consumer as ``parent``; the consumer's app must provide
    ``IntakeServices``."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._services: IntakeServices = parent.app
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._ticking_hub: Any = None
        self._celery_consumer: Any = None
        self._made_pipeline: Pipeline | None = None
        # Taken from the broker but not started: a suspect (``SoloRuns``) waits here until
        # nothing else is in flight, and every message after it waits until its run alone has
        # ended. Each redelivered message is paired with its earlier runs without an outcome
        # (None: Redis did not say).
        self._held: deque[tuple[Message, int | None]] = deque()
        self._alone: _Run | None = None
        # Redelivered messages running beside the others, by id: struck off once acked.
        self._counted: dict[int, _Run] = {}
        self._solo_runs: SoloRuns | None = None

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """Live events on ``channel``, backfill on a channel of its own: a prefetch is set per
        channel before its consumer starts, and the backfill's is the smaller, so that bulk
        traffic never fills the pipeline ahead of live events."""
        backfill_channel = channel.connection.channel()
        lanes = self._services.calls_in_flight
        return [
            self._consumer(channel, events_queue, PREFETCH_PER_CALL * lanes),
            self._consumer(backfill_channel, backfill_queue, BACKFILL_PREFETCH_PER_CALL * lanes),
        ]

    def _consumer(self, channel: Any, queue: Queue, prefetch_count: int) -> Consumer:
        # The body exactly as published: py-amqp would otherwise decode it to text when the
        # producer set a content encoding, and a dead letter must keep the original bytes.
        channel.auto_decode = False
        # Made by the switch: it does not consume while an outage or a pause holds consumption.
        return self._services.consumer_switch.consumer(
            channel,
            queues=[queue],
            on_message=self.on_message,
            on_decode_error=self.on_undecodable,
            prefetch_count=prefetch_count,
            no_ack=False,
        )

    def start(self, c: Any) -> None:
        self._celery_consumer = c
        # Held on the channel of an earlier connection: the broker delivers them again.
        self._held.clear()
        # Before the first event, which would otherwise wait while clients and threads are made.
        self._pipeline()
        super().start(c)
        self._services.consumer_switch.attach(c, self.consumers)
        if c.hub is not None and c.hub is not self._ticking_hub:
            self._ticking_hub = c.hub
            # A signal does not interrupt the loop's poll; without a timer an idle worker would
            # notice SIGTERM only when the poll times out (about 10 s).
            c.hub.call_repeatedly(SHUTDOWN_CHECK_SECONDS, _nothing)

    def stop(self, c: Any) -> None:
        """Warm shutdown: take no more events, let the calls in flight finish, settle them."""
        for consumer in self.consumers or []:
            ignore_errors(c.connection, consumer.cancel)
        grace = self._services.ccsync_settings.http_timeout + SHUTDOWN_GRACE_SECONDS
        if not self._pipeline().wait_idle(grace):
            log.warning("shutdown: calls still in flight after %.0fs are left to redelivery", grace)
        # The event loop has stopped: this thread alone uses the channel now.
        self._pipeline().acknowledge(c.connection_errors)
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
        if self._held or self._alone is not None or _redelivered(message):
            self._held.append((message, self._earlier_runs(message)))
            self._start_held()
        else:
            self._take_safely(message, deliveries=0)

    def _earlier_runs(self, message: Message) -> int | None:
        """A redelivered message's runs that ended without an outcome; None if Redis does not
        say, 0 for a first delivery."""
        if not _redelivered(message):
            return 0
        envelope = self._envelope(message)
        try:
            return self._solo_run_counter().runs(message_key(envelope.body, envelope.headers))
        except LedgerUnavailable:
            return None

    def _start_held(self) -> None:
        """In the event loop: starts held messages in order, a first delivery and a redelivered
        one with no run held against it at once, a suspect (``SoloRuns``) only once nothing else
        is in flight; none after a suspect until its run alone has ended.

        A worker that dies raises the broker's delivery count of every message in hand. Each run
        of a redelivered message is counted, and struck off once it has an outcome; running a
        suspect alone means that if the worker dies again, that message is the one charged, and
        the others only have their broker count raised, which ccsync does not hold against them.
        """
        while self._alone is None and self._held:
            message, earlier = self._held[0]
            if earlier == 0:
                self._held.popleft()
                if _redelivered(message):
                    self._start_counted(message)
                else:
                    self._take_safely(message, deliveries=0)
            elif not self._pipeline().wait_idle(0):
                return  # the settling of the last one in flight calls again
            else:
                self._held.popleft()
                self._alone = self._start_counted(message)
                self._end_alone_run()

    def _start_counted(self, message: Message) -> _Run:
        """Counts the run of a redelivered message and starts it."""
        envelope = self._envelope(message)
        run = _Run(message, message_key(envelope.body, envelope.headers), counted=True)
        try:
            # The delivery that made it redelivered, and each run since that had no outcome.
            deliveries = 1 + self._solo_run_counter().begin(run.key)
        except LedgerUnavailable as exc:
            log.warning("a run not counted (%s): the broker's delivery count decides", exc)
            run.counted = False
            deliveries = delivery_count(message)
        self._counted[id(message)] = run
        if self._take_safely(message, deliveries=deliveries):
            self._strike_off([(message, True)])
        return run

    def _strike_off(self, settled: Sequence[tuple[Message, bool]]) -> None:
        """Counted runs settled: acked, the message's runs are struck off; requeued, this run
        stays counted, as a delivery without an outcome."""
        for message, acked in settled:
            run = self._counted.pop(id(message), None)
            if run is None:
                continue
            if run.counted and acked:
                try:
                    self._solo_run_counter().concluded(run.key)
                except LedgerUnavailable as exc:
                    log.warning("a run could not be struck off (%s)", exc)

    def _end_alone_run(self) -> None:
        """Once nothing is in flight, the run alone (struck off as it settled) has ended."""
        if self._alone is not None and self._pipeline().wait_idle(0):
            self._alone = None

    def _solo_run_counter(self) -> SoloRuns:
        if self._solo_runs is None:
            self._solo_runs = SoloRuns.from_url(self._services.ccsync_settings.redis_url)
        return self._solo_runs

    def _take_safely(self, message: Message, *, deliveries: int) -> bool:
        """True when the message was dead-lettered and acked here, False when it was started
        or requeued."""
        try:
            return self._take(message, deliveries)
        except Exception:
            # Never let an exception out: Celery would stop the whole worker. The message goes
            # back to the queue, which counts its deliveries up to the delivery limit.
            log.exception("intake failed; the message is requeued")
            # A counted run stays counted: a delivery without an outcome.
            self._counted.pop(id(message), None)
            self._close_publisher()
            try:
                message.requeue()
            except Exception:
                log.exception("requeue failed; the broker will redeliver the message")
            return False

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

    def _take(self, message: Message, deliveries: int) -> bool:
        """``deliveries``: those that ended without an outcome, as charged to this message."""
        metrics.EVENTS_RECEIVED.inc()
        envelope = self._envelope(message)
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
            return True
        with tracing.consuming(
            envelope.headers, envelope.body, envelope.content_type, queue=EVENTS_QUEUE
        ) as consumed:
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
                return True
            call = self._services.applier.prepare(Attempt.first(event, envelope), consumed=consumed)
            call.backfill = _routing_key(message) == BACKFILL_ROUTING_KEY
            self._pipeline().put(call, message)
            return False

    def _pipeline(self) -> Pipeline:
        # Made once the worker runs, never at import: the pipeline holds clients and threads.
        if self._made_pipeline is None:
            settings = self._services.ccsync_settings
            self._made_pipeline = Pipeline(
                applier=self._services.applier,
                lanes=self._services.calls_in_flight,
                make_connection=lane_connections(settings),
                on_settled=self._ask_loop_to_settle,
                liveness=self._services.liveness,
                stall_seconds=settings.liveness_seconds,
            )
        return self._made_pipeline

    def _ask_loop_to_settle(self) -> None:
        """From any thread: the loop, owner of the channel, acks what is settled."""
        self._celery_consumer.call_soon(self._settle_in_loop)

    def _settle_in_loop(self) -> None:
        settled = self._pipeline().acknowledge(self._celery_consumer.connection_errors)
        if self._counted:
            self._strike_off(settled)
        if self._alone is not None or self._held:
            self._end_alone_run()
            self._start_held()

    def _validate(self, envelope: Envelope) -> IdentifierChanged:
        limit = self._services.ccsync_settings.max_event_bytes
        if len(envelope.body) > limit:
            raise InvalidEvent(f"body is {len(envelope.body)} bytes; the limit is {limit}")
        event = decode_event(envelope.body, envelope.content_type, envelope.headers)
        if event.tenant is None:
            default_tenant = self._services.ccsync_settings.tenant
            if default_tenant is None:
                raise InvalidEvent("tenant: missing, and CLOUDCOCKPIT_TENANT is not set")
            event = event.model_copy(update={"tenant": default_tenant})
        reject_if_ahead(
            event,
            now=datetime.now(UTC),
            max_skew_seconds=self._services.ccsync_settings.max_clock_skew_seconds,
        )
        return event

    def _dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None:
        """Confirmed and taken by a queue once this returns; raises otherwise (the message is
        then requeued, not acked)."""
        channel = self._publisher().channel
        assert self._connection is not None  # made with the publisher
        publish_declaring_topology(
            self._connection,
            lambda: publish_dead_letter(channel, envelope=envelope, letter=letter),
        )
        metrics.EVENTS_DEAD_LETTERED.labels(letter.reason).inc()

    def _publisher(self) -> Producer:
        if self._producer is None:
            self._connection = self._services.connection_for_write()
            self._producer = Producer(self._connection.default_channel)
        return self._producer

    def _close_publisher(self) -> None:
        if self._connection is not None:
            self._connection.release()
        self._connection = self._producer = None


def _routing_key(message: Message) -> str | None:
    key = (message.delivery_info or {}).get("routing_key")
    return key if isinstance(key, str) else None


def _redelivered(message: Message) -> bool:
    return bool((message.delivery_info or {}).get("redelivered"))


def delivery_count(message: Message) -> int:
    """Deliveries so far, as the quorum queue counts them. The queue sets the header only on a
    redelivery: on a first delivery it can only be the producer's, and counts for nothing."""
    if not (message.delivery_info or {}).get("redelivered"):
        return 0
    count = (message.headers or {}).get(HEADER_DELIVERY_COUNT)
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
