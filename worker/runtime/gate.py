"""Before the call: the relationships of many events taken in one Redis round trip.

A stage of the pipeline (``worker.runtime.pipeline``). The intake hands each validated first
attempt here. The gate's thread takes every one waiting, tries to take their relationships in one
Redis script call, and hands each event it now holds to the caller, whose lanes then only call
CloudCockpit. An event whose relationship another event holds is tried again, backing off, until
the ledger's lock wait is over; it is then concluded as busy and comes back through the delay
ladder.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kombu.message import Message

from worker.exceptions import LedgerUnavailable, RelationshipBusy
from worker.processing.attempts import Call
from worker.processing.ledger import BusyBackoff, Ledger
from worker.runtime.batches import take_batch

log = logging.getLogger(__name__)

#: Most events whose relationships one script call takes; the intake's prefetch bounds it anyway.
MAX_BATCH = 256
#: Seconds the gate gathers arrivals, so that one round trip serves several events.
GATHER_SECONDS = 0.02
#: Held events waiting for a lane from which on the gate gathers: no lane waits for it then.
GATHER_BACKLOG = 16
#: Seconds the gate waits for work at most before it goes round (and beats) again.
IDLE_BEAT_SECONDS = 1.0

CallHandler = Callable[[Call, Message], None]
Beat = Callable[[], None]


@dataclass
class _Claim:
    call: Call
    message: Message
    give_up_at: float
    next_try: float = 0.0
    backoff: BusyBackoff = field(default_factory=BusyBackoff)
    handed_over: bool = False

    def hand_to(self, handler: CallHandler) -> None:
        handler(self.call, self.message)
        self.handed_over = True


class Gate:
    """Takes relationships in batches, in the thread that runs ``run``.

    ``on_held`` gets each call whose relationship is now held (to be sent); ``on_decided`` gets
    each call that is not to be sent (outage, busy, ledger down): both run in the gate's thread.
    ``backlog`` says how many held calls wait for a lane. ``on_lost`` gets a call the gate
    failed on; its message goes back to the queue.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        on_held: CallHandler,
        on_decided: CallHandler,
        on_lost: CallHandler,
        backlog: Callable[[], int],
    ) -> None:
        self._ledger = ledger
        self._on_held = on_held
        self._on_decided = on_decided
        self._on_lost = on_lost
        self._backlog = backlog
        self._arrivals: queue.SimpleQueue[tuple[Call, Message]] = queue.SimpleQueue()

    def put(self, call: Call, message: Message) -> None:
        self._arrivals.put((call, message))

    def run(self, beat: Beat) -> None:
        """The gate's loop, for ever; ``beat`` once a round, at least every
        ``IDLE_BEAT_SECONDS`` while idle."""
        waiting: list[_Claim] = []
        while True:
            beat()
            wait = IDLE_BEAT_SECONDS
            if waiting:
                next_try = min(claim.next_try for claim in waiting)
                wait = min(wait, max(0.0, next_try - time.monotonic()))
            gather = GATHER_SECONDS if self._backlog() >= GATHER_BACKLOG else 0.0
            arrived = take_batch(self._arrivals, wait=wait, gather=gather, most=MAX_BATCH)
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
                        self._on_lost(claim.call, claim.message)

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
                ],
                owned=True,
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
                claim.hand_to(self._on_held)
            elif now >= claim.give_up_at:
                claim.call.failure = RelationshipBusy(
                    f"relationship {claim.call.relationship.name} is busy"
                )
                claim.hand_to(self._on_decided)
            else:
                claim.next_try = now + claim.backoff.next_pause()
                again.append(claim)
        return again
