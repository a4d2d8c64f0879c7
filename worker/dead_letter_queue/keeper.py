"""The keeper: moves dead letters from the queue ``ccsync.dead-letter`` into the store.

It takes a batch off the queue unacknowledged, stores it in one transaction and acks the batch
only once that transaction is committed. Killed anywhere before the ack, it leaves the batch to
the broker, which delivers it again; the store keys each dead letter by its ``identity``, so the
second delivery adds nothing: nothing is lost, nothing is stored twice.

While the store is unreachable the keeper takes nothing: dead letters wait in the queue (quorum,
confirmed) and arrive once it answers again. A batch taken just before the store went away is
held, not handed back (every return raises a quorum queue's delivery count), and stored when the
store is back. Dead letters already in the queue when the store was introduced are moved in the
same way: the migration is the keeper's first run.

It also enforces the retention: replayed and purged dead letters older than it are deleted.

Where it runs: ``ccsync dlq keep`` (a process of its own, one or more: the queue hands each dead
letter to one of them), and inside ``ccsync console``. When none runs, dead letters wait in the
queue, and the operator tools show only what was stored before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from kombu import Connection

from worker.amqp.topology import declare_dead_letter_queue
from worker.constants import DEAD_LETTER_QUEUE
from worker.dead_letter_queue.reading import as_record, reader_channel
from worker.dead_letter_queue.store import DeadLetterStore, StoreUnavailable

log = logging.getLogger(__name__)

#: Dead letters stored per transaction (and held unacknowledged at most).
BATCH: Final = 500
#: Seconds a batch waits to fill before what came is stored anyway.
FILL_SECONDS: Final = 0.2
#: Seconds between two tries to reach a store that did not answer.
STORE_RETRY_SECONDS: Final = 2.0
#: Seconds between two rounds of the retention.
EXPIRE_EVERY_SECONDS: Final = 60.0


@dataclass
class KeeperReport:
    received: int = 0  # deliveries taken off the queue
    stored: int = 0  # new rows (the rest were stored already)
    expired: int = 0  # deleted by the retention
    store_down: int = 0  # tries that found the store unreachable


class Keeper:
    """One keeper on ``connection`` (its own channel) and ``store``."""

    def __init__(
        self,
        connection: Connection,
        store: DeadLetterStore,
        *,
        retention: timedelta,
        batch: int = BATCH,
    ) -> None:
        self._connection = connection
        self._store = store
        self._retention = retention
        self._batch = batch
        self._held: list[Any] = []
        self._channel: Any = None
        self._expired_at = 0.0
        self.report = KeeperReport()

    def _consume(self) -> None:
        declare_dead_letter_queue(self._connection)
        self._channel = reader_channel(self._connection)
        self._channel.basic_qos(0, self._batch, False)
        self._channel.basic_consume(queue=DEAD_LETTER_QUEUE, callback=self._held.append)

    def _fill(self) -> None:
        """Waits for deliveries until the batch is full or none came for ``FILL_SECONDS``."""
        while len(self._held) < self._batch:
            try:
                self._connection.drain_events(timeout=FILL_SECONDS)
            except TimeoutError:
                return

    def _store_held(self, stop: Callable[[], bool]) -> bool:
        """Stores the held batch, then acks it; True once done. While the store is unreachable
        the batch stays held (not handed back) and the store is tried again; False if ``stop``
        came first."""
        records = [as_record(message) for message in self._held]
        while True:
            try:
                self.report.stored += self._store.add(records)
                break
            except StoreUnavailable as exc:
                self.report.store_down += 1
                log.warning("%s; %d dead letter(s) held until it answers", exc, len(records))
                if stop():
                    return False
                time.sleep(STORE_RETRY_SECONDS)
        self._channel.basic_ack(self._held[-1].delivery_tag, multiple=True)
        self.report.received += len(self._held)
        self._held.clear()
        return True

    def _expire(self) -> None:
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_SECONDS:
            return
        self.report.expired += self._store.expire(retention=self._retention)
        self._expired_at = time.monotonic()

    def step(self, stop: Callable[[], bool] = lambda: False) -> int:
        """One round: a batch moved (its size; 0 when the queue had none) and the retention.
        Takes nothing while the store is unreachable (raises ``StoreUnavailable``)."""
        if self._channel is None:
            self._store.ping()  # before taking anything: unreachable, the queue keeps them
            self._consume()
        self._fill()
        moved = len(self._held)
        if self._held and not self._store_held(stop):
            return 0
        self._expire()
        return moved

    def run(self, stop: Callable[[], bool], *, until_empty: bool = False) -> KeeperReport:
        """Moves dead letters until ``stop`` answers True (or, ``until_empty``, until a round
        finds the queue empty). An unreachable store is waited for, every
        ``STORE_RETRY_SECONDS``."""
        try:
            while not stop():
                try:
                    moved = self.step(stop)
                except StoreUnavailable as exc:
                    self.report.store_down += 1
                    log.warning("%s; dead letters wait in the queue", exc)
                    time.sleep(STORE_RETRY_SECONDS)
                    continue
                if until_empty and not moved:
                    break
        finally:
            self.close()
        return self.report

    def close(self) -> None:
        """Closes the keeper's channel: the broker gets back whatever is held unstored."""
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception as exc:  # the connection is gone: the broker has them back
                log.debug("keeper channel not closed cleanly: %s", exc)
        self._held.clear()
