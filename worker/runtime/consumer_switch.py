"""Pausing and resuming consumption from any thread (the outage guard runs in task threads, the
pause watcher in its own).

Consumption is held while anyone holds it: the outage guard (``OUTAGE``) or an operator's
``ccsync pause`` (``OPERATOR``). Each releases only its own hold, so an outage that ends does not
resume a paused worker, and a resume does not resume a worker whose outage guard is open.

kombu consumers belong to the worker's event loop thread; the switch hands each change to that
loop through ``Hub.call_soon``, which is thread-safe and wakes the loop. The consumers it makes
(``consumer``, and Celery's task consumer through ``SwitchedAMQP``) do not start consuming while
consumption is held, so a worker that starts paused takes nothing, not even a prefetch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.app.amqp import AMQP
from kombu import Consumer

log = logging.getLogger(__name__)

#: The outage guard's hold (``OutageGuard`` opened).
OUTAGE = "outage protection"
#: An operator's hold (``ccsync pause``).
OPERATOR = "ccsync pause"


class ConsumerSwitch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._celery_consumer: Any = None
        self._intake_consumers: list[Any] = []
        self._holds: set[str] = set()

    @property
    def paused(self) -> bool:
        """Whether anyone holds consumption."""
        return bool(self._holds)

    @property
    def holds(self) -> frozenset[str]:
        return frozenset(self._holds)

    def consumer(self, channel: Any, **options: Any) -> Consumer:
        """A kombu ``Consumer`` that starts consuming only while nobody holds consumption."""
        return SwitchedConsumer(self, channel, **options)

    def attach(self, celery_consumer: Any, intake_consumers: list[Any]) -> None:
        """Called by the intake step whenever the worker (re)connects."""
        with self._lock:
            self._celery_consumer = celery_consumer
            self._intake_consumers = list(intake_consumers)
            paused = bool(self._holds)
        if paused:
            self._in_loop(self._cancel)

    def pause(self, hold: str = OUTAGE) -> None:
        """``hold`` holds consumption until it is released by ``resume(hold)``."""
        with self._lock:
            first = not self._holds
            self._holds.add(hold)
        if first:
            self._in_loop(self._cancel)

    def resume(self, hold: str = OUTAGE) -> None:
        """Releases ``hold``; consumption resumes once no other hold is left."""
        with self._lock:
            if hold not in self._holds:
                return
            self._holds.discard(hold)
            others = sorted(self._holds)
        if others:
            log.warning("%s released; consumption stays paused by %s", hold, ", ".join(others))
            return
        self._in_loop(self._consume)

    def _in_loop(self, change: Any) -> None:
        hub = getattr(self._celery_consumer, "hub", None)
        if hub is None:
            # Not consuming yet: the consumers, once made, consume only if nobody holds them.
            return
        hub.call_soon(change)

    def _cancel(self) -> None:
        if not self._holds:
            return
        for consumer in self._consumers():
            consumer.cancel()
        log.warning("consumption paused (%s)", ", ".join(sorted(self._holds)))

    def _consume(self) -> None:
        if self._holds:
            return
        for consumer in self._consumers():
            consumer.consume()
        log.warning("consumption resumed")

    def _consumers(self) -> list[Any]:
        consumers = list(self._intake_consumers)
        task_consumer = getattr(self._celery_consumer, "task_consumer", None)
        if task_consumer is not None:
            consumers.append(task_consumer)
        return consumers


class SwitchedConsumer(Consumer):  # type: ignore[misc]
    """A kombu ``Consumer`` whose ``consume`` does nothing while its switch holds consumption:
    Celery and kombu start consumers at each (re)connection, before the switch could cancel
    them, and the broker would deliver a prefetch at once."""

    def __init__(self, switch: ConsumerSwitch, channel: Any, **options: Any) -> None:
        self._switch = switch
        super().__init__(channel, **options)

    def consume(self, no_ack: bool | None = None) -> None:
        if self._switch.paused:
            return
        super().consume(no_ack)


class SwitchedAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helpers, with a task consumer of the app's ``consumer_switch``."""

    def TaskConsumer(
        self, channel: Any, queues: Any = None, accept: Any = None, **options: Any
    ) -> Consumer:
        return self.app.consumer_switch.consumer(
            channel,
            accept=self.app.conf.accept_content if accept is None else accept,
            queues=queues or list(self.queues.consume_from.values()),
            **options,
        )
