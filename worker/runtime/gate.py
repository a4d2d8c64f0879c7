"""Before the call: the relationships of many events taken in one Redis round trip.

The intake hands each validated first attempt here. The gate thread takes every one waiting,
tries to take their relationships in one Redis script call, and hands each event it now holds
to the pool, whose threads then only call CloudCockpit. An event whose relationship another event
holds is tried again, backing off, until the ledger's lock wait is over; it is then concluded as
busy and comes back through the delay ladder.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kombu.message import Message

from worker.exceptions import LedgerUnavailable, RelationshipBusy
from worker.processing.attempts import Call
from worker.processing.ledger import BUSY_FIRST_PAUSE_SECONDS, BUSY_LONGEST_PAUSE_SECONDS, Ledger
from worker.runtime.batches import take_batch

log = logging.getLogger(__name__)

#: Most events whose relationships one script call takes; the intake's prefetch bounds it anyway.
MAX_BATCH = 256
#: Seconds the gate gathers arrivals, so that one round trip serves several events.
GATHER_SECONDS = 0.02
#: Held events waiting for a pool thread from which on the gate gathers: no thread waits for it.
GATHER_BACKLOG = 16

CallHandler = Callable[[Call, Message], None]


@dataclass
class _Claim:
    call: Call
    message: Message
    give_up_at: float
    next_try: float = 0.0
    pause: float = BUSY_FIRST_PAUSE_SECONDS
    handed_over: bool = False

    def hand_to(self, handler: CallHandler) -> None:
        handler(self.call, self.message)
        self.handed_over = True


class Gate:
    """One thread that takes relationships in batches.

    ``on_held`` gets each call whose relationship is now held (to be sent), and the pool thread
    that takes it calls ``decrement_backlog``; ``on_decided`` gets each call that is not to be
    sent (outage, busy, ledger down): both run in the gate thread. ``on_lost`` gets the message
    of a call the gate failed on; it goes back to the queue.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        on_held: CallHandler,
        on_decided: CallHandler,
        on_lost: Callable[[Message], None],
    ) -> None:
        self._ledger = ledger
        self._on_held = on_held
        self._on_decided = on_decided
        self._on_lost = on_lost
        self._arrivals: queue.SimpleQueue[tuple[Call, Message]] = queue.SimpleQueue()
        self._backlog_lock = threading.Lock()
        self._backlog = 0
        self._thread = threading.Thread(target=self._run, name="ccsync-gate", daemon=True)
        self._thread.start()

    def put(self, call: Call, message: Message) -> None:
        self._arrivals.put((call, message))

    def decrement_backlog(self) -> None:
        """One held call fewer waits for a pool thread: one has taken it, to send it now."""
        with self._backlog_lock:
            self._backlog -= 1

    def _held(self, call: Call, message: Message) -> None:
        with self._backlog_lock:
            self._backlog += 1
        self._on_held(call, message)

    def _run(self) -> None:
        waiting: list[_Claim] = []
        while True:
            timeout = None
            if waiting:
                timeout = max(0.0, min(claim.next_try for claim in waiting) - time.monotonic())
            gather = GATHER_SECONDS if self._backlog >= GATHER_BACKLOG else 0.0
            arrived = take_batch(self._arrivals, wait=timeout, gather=gather, most=MAX_BATCH)
            now = time.monotonic()
            due = [claim for claim in waiting if claim.next_try <= now]
            waiting = [claim for claim in waiting if claim.next_try > now]
            give_up_at = now + self._ledger.lock_wait_seconds
            claims = [_Claim(call, message, give_up_at) for call, message in arrived] + due
            try:
                waiting += self.claim(claims)
            except Exception:
                log.exception("the gate failed on %d events; they are requeued", len(claims))
                for claim in claims:
                    if not claim.handed_over:
                        claim.call.abandon()
                        self._on_lost(claim.message)

    def claim(self, claims: list[_Claim]) -> list[_Claim]:
        """Tries each claim once; returns those to try again later."""
        wanting = []
        for claim in claims:
            if claim.call.needs_relationship:
                wanting.append(claim)
            else:
                claim.hand_to(self._on_decided)
        if not wanting:
            return []
        try:
            holds = self._ledger.try_acquire_all(
                [
                    (
                        claim.call.relationship,
                        claim.call.attempt.event.event_id,
                        claim.call.attempt.inherited_lock,
                    )
                    for claim in wanting
                ]
            )
        except LedgerUnavailable as exc:
            for claim in wanting:
                claim.call.failure = exc
                claim.hand_to(self._on_decided)
            return []
        now = time.monotonic()
        again = []
        for claim, hold in zip(wanting, holds, strict=True):
            if hold is not None:
                claim.call.hold = hold
                claim.hand_to(self._held)
            elif now >= claim.give_up_at:
                claim.call.failure = RelationshipBusy(
                    f"relationship {claim.call.relationship.name} is busy"
                )
                claim.hand_to(self._on_decided)
            else:
                claim.next_try = now + claim.pause
                claim.pause = min(claim.pause * 2, BUSY_LONGEST_PAUSE_SECONDS)
                again.append(claim)
        return again
