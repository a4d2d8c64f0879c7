"""After the call: first attempts are concluded in batches, off the thread that calls CloudCockpit.

A stage of the pipeline (``worker.runtime.pipeline``). A lane of the caller makes the call
(``Applier.send_async``) and hands it here. The settler's thread takes every call waiting, leaves
their relationships in one Redis round trip, concludes each (counted, logged, retried or
dead-lettered), and only then hands the messages to the event loop to be acked. The caller's
loop goes straight back to calling, so that CloudCockpit waits as little as possible between two
calls of one lane (the figures are in docs/concurrency.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from kombu.message import Message

from worker.processing.applier import Applier
from worker.processing.attempts import Call
from worker.runtime.batches import take_batch

log = logging.getLogger(__name__)

#: Most calls concluded in one round trip: few enough that a batch takes milliseconds.
MAX_BATCH = 64
#: Seconds the settler gathers ended calls for one round trip; the intake's prefetch absorbs it.
GATHER_SECONDS = 0.02
#: Seconds the settler waits for work at most before it goes round (and beats) again.
IDLE_BEAT_SECONDS = 1.0


class InFlightMessages:
    """Counts the first attempts in flight, and holds the messages whose outcome is settled,
    waiting to be acked or requeued.

    The stages report here; the event loop thread (or ``stop``, once the loop is over) acks,
    since a channel must only be used by one thread.
    """

    def __init__(self) -> None:
        self._done: queue.SimpleQueue[tuple[Message, bool]] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._in_flight = 0

    def started(self) -> None:
        with self._idle:
            self._in_flight += 1

    def finished(self, message: Message, *, ack: bool) -> None:
        """``ack``: the outcome is recorded; otherwise the message goes back to the queue."""
        self._done.put((message, ack))
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def settle(
        self, connection_errors: tuple[type[BaseException], ...]
    ) -> list[tuple[Message, bool]]:
        """Acks or requeues every message settled so far; returns each with whether it was
        acked."""
        settled: list[tuple[Message, bool]] = []
        while True:
            try:
                message, ack = self._done.get_nowait()
            except queue.Empty:
                return settled
            settled.append((message, ack))
            if ack:
                message.ack_log_error(log, connection_errors)
            else:
                # Back to the queue, which counts the delivery: a message that keeps failing
                # ends as delivery-limit.
                message.reject_log_error(log, connection_errors, requeue=True)


class Settler:
    """Concludes calls in batches, in the thread that runs ``run``, and reports their messages as
    settled.

    ``on_settled`` is called after each batch, from the settler's thread: it asks the event loop
    to ack what ``in_flight`` now holds.
    """

    def __init__(
        self, *, applier: Applier, in_flight: InFlightMessages, on_settled: Callable[[], None]
    ) -> None:
        self._applier = applier
        self._in_flight = in_flight
        self._on_settled = on_settled
        self._calls: queue.SimpleQueue[tuple[Call, Message]] = queue.SimpleQueue()

    def put(self, call: Call, message: Message) -> None:
        self._calls.put((call, message))

    def run(self, beat: Callable[[], None]) -> None:
        """The settler's loop, for ever; ``beat`` once a round, at least every
        ``IDLE_BEAT_SECONDS`` while idle."""
        while True:
            beat()
            batch = take_batch(
                self._calls, wait=IDLE_BEAT_SECONDS, gather=GATHER_SECONDS, most=MAX_BATCH
            )
            if batch:
                self.conclude(batch)

    def conclude(self, batch: list[tuple[Call, Message]]) -> None:
        try:
            self._applier.leave_all([call for call, _ in batch])
        except Exception:
            # Not a Redis outage (that fails each call, to be retried): a bug. The messages go
            # back to the queue; the locks expire by themselves.
            log.exception(
                "leaving %d relationships failed; their messages are requeued", len(batch)
            )
            for call, message in batch:
                call.abandon()
                self._in_flight.finished(message, ack=False)
            self._on_settled()
            return
        for call, message in batch:
            try:
                self._applier.conclude(call)
                recorded = True
            except Exception:
                log.exception("event %s: no outcome could be recorded", call.attempt.event.event_id)
                recorded = False
            self._in_flight.finished(message, ack=recorded)
        self._on_settled()
