"""Pausing and resuming consumption from any thread (the outage guard runs in task threads).

kombu consumers belong to the worker's event loop thread; the switch hands each change to that
loop through ``Hub.call_soon``, which is thread-safe and wakes the loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class ConsumerSwitch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._celery_consumer: Any = None
        self._intake_consumers: list[Any] = []
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def attach(self, celery_consumer: Any, intake_consumers: list[Any]) -> None:
        """Called by the intake step whenever the worker (re)connects."""
        with self._lock:
            self._celery_consumer = celery_consumer
            self._intake_consumers = list(intake_consumers)
            paused = self._paused
        if paused:
            self._in_loop(self._cancel)

    def pause(self) -> None:
        with self._lock:
            self._paused = True
        self._in_loop(self._cancel)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
        self._in_loop(self._consume)

    def _in_loop(self, change: Any) -> None:
        hub = getattr(self._celery_consumer, "hub", None)
        if hub is None:
            log.warning("no event loop to pause or resume consumption in")
            return
        hub.call_soon(change)

    def _cancel(self) -> None:
        if not self._paused:
            return
        for consumer in self._consumers():
            consumer.cancel()
        log.warning("consumption paused")

    def _consume(self) -> None:
        if self._paused:
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
