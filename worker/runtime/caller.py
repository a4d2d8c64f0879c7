"""The calls of first attempts: one event-loop thread keeps all of them in flight.

A stage of the pipeline (``worker.runtime.pipeline``). The gate hands each event whose relationship
it holds to ``Caller.put``. One thread runs an asyncio loop with a fixed number of lanes (the
worker's calls in flight); a lane takes the next event, fences its lock and makes its call
(``Applier.send_async``) through a connection of its own, then hands it to the settler. Hundreds of
calls can wait on CloudCockpit at once for the price of a coroutine each, where a thread per call
costs a thread switch, and a turn of the GIL, at every step of every call (the measurements are in
docs/concurrency.md).

Before its fence, a lane waits for its call's slot in the tenant's API rate budget
(``worker.processing.budget``), when one applies: no Redis round trip for a tenant without one.

Fences are batched: every lane about to call while a fence round trip is under way waits for the
next one, which serves all of them in one script call (``Ledger.fence_all``); so are the budget's
reservations (``RateBudget.reserve_all``). Each kind of round trip runs in a thread of its own
(``RoundTrips``), so a slow Redis delays the calls it fences, never the calls in flight.

Every call ends by the worker's presence deadline (``Presence.valid_until``, moved on at each
beat of the loop): once its presence record may have expired, the calls in flight are cut and
come back a second later, their attempts unspent. Another worker that finds the record gone may
then take their relationships over without waiting for their leases.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import time
from collections import deque
from collections.abc import Callable

from kombu.message import Message

from worker.cloudcockpit.connection import AsyncConnection
from worker.exceptions import RelationshipBusy
from worker.observability import metrics
from worker.processing.applier import Applier
from worker.processing.attempts import Call
from worker.processing.budget import Reservation
from worker.processing.ledger import Hold
from worker.runtime.batches import RoundTrips

log = logging.getLogger(__name__)

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio on every async request to learn which event loop runs it; when
    # sniffio is not installed, each of those imports searches sys.path anew, which costs more
    # CPU than the rest of the request. None in sys.modules makes that import fail at once,
    # with the same answer: asyncio.
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

CallHandler = Callable[[Call, Message], None]

#: Seconds between two beats of the caller's event loop.
BEAT_SECONDS = 1.0


class LaneEnded(RuntimeError):
    """A lane of the caller ended, which only a bug can make it do: the worker must stop."""


class Caller:
    """Calls CloudCockpit for each event put here, ``lanes`` at a time, in the thread that runs
    ``run``.

    ``on_called`` gets each call made (or not made: verdict, failure), ``on_lost`` a call that
    failed on a bug; both run in the caller's thread. ``make_connection`` makes a lane's
    connection, in that thread, on the lane's first call.
    """

    def __init__(
        self,
        *,
        applier: Applier,
        lanes: int,
        make_connection: Callable[[], AsyncConnection],
        on_called: CallHandler,
        on_lost: CallHandler,
    ) -> None:
        self._applier = applier
        self._make_connection = make_connection
        self._on_called = on_called
        self._on_lost = on_lost
        self._loop = asyncio.new_event_loop()
        # Events no lane has taken yet, live ones first, and lanes waiting for one, the last to
        # wait first: under a light load the same few lanes (and their connections, kept alive)
        # do the calls.
        self._pending: deque[tuple[Call, Message]] = deque()
        self._pending_backfill: deque[tuple[Call, Message]] = deque()
        self._idle: list[asyncio.Future[tuple[Call, Message]]] = []
        # Filled by other threads; the loop is woken once per batch of arrivals, not per event.
        self._arrivals: deque[tuple[Call, Message]] = deque()
        self._wake_pending = False
        self._fences = RoundTrips(self._loop, self._fence_all, name="ccsync-fence")
        self._budget = applier.budget
        self._reservations = (
            None
            if self._budget is None
            else RoundTrips(self._loop, self._budget.reserve_all, name="ccsync-budget")
        )
        self._lanes = lanes
        self._presence = applier.ledger.presence
        # The deadline of each call in flight, moved on as the presence is renewed.
        self._cuts: set[asyncio.Timeout] = set()

    def put(self, call: Call, message: Message) -> None:
        """From any thread: the event's relationship is held; its call is to be made."""
        self._arrivals.append((call, message))
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._take_arrivals)

    def _take_arrivals(self) -> None:
        # Cleared before draining: an arrival after the last one drained wakes the loop again.
        self._wake_pending = False
        while self._arrivals:
            item = self._arrivals.popleft()
            if self._idle:
                self._idle.pop().set_result(item)
            elif item[0].backfill:
                self._pending_backfill.append(item)
            else:
                self._pending.append(item)

    async def _next(self) -> tuple[Call, Message]:
        if self._pending:
            return self._pending.popleft()
        if self._pending_backfill:
            return self._pending_backfill.popleft()
        waiter: asyncio.Future[tuple[Call, Message]] = self._loop.create_future()
        self._idle.append(waiter)
        return await waiter

    def backlog(self) -> int:
        """From any thread: the events put here that no lane has taken yet."""
        return len(self._arrivals) + len(self._pending) + len(self._pending_backfill)

    def run(self, beat: Callable[[], None]) -> None:
        """The caller's event loop, for ever; ``beat`` every ``BEAT_SECONDS`` while it runs.

        Raises ``LaneEnded`` when a lane ends (something escaped its handling of a call): the
        calls it would have made would wait for ever."""
        asyncio.set_event_loop(self._loop)
        ended: list[asyncio.Task[None]] = []

        def lane_ended(lane: asyncio.Task[None]) -> None:
            ended.append(lane)
            self._loop.stop()

        for _ in range(self._lanes):
            self._loop.create_task(self._lane()).add_done_callback(lane_ended)

        def beating() -> None:
            beat()
            if self._presence is not None:
                for cut in self._cuts:
                    # One that expired already is on its way out: it cannot be moved.
                    if not cut.expired():
                        cut.reschedule(self._presence.valid_until)
            if self._budget is not None and self._reservations is not None:
                self._reservations.run_soon(self._budget.refresh)
            self._loop.call_later(BEAT_SECONDS, beating)

        beating()
        self._loop.run_forever()
        lane = ended[0]
        raise LaneEnded(f"a lane of the caller ended: {lane}") from (
            None if lane.cancelled() else lane.exception()
        )

    async def _lane(self) -> None:
        connection: AsyncConnection | None = None
        while True:
            call, message = await self._next()
            if connection is None:
                # Outside the call's handling: a lane that cannot be set up ends, which stops the
                # worker (``LaneEnded``); it is never the message's fault.
                connection = self._make_connection()
            try:
                await self._send(call, connection)
            except Exception:
                log.exception("event %s: no outcome could be recorded", call.attempt.event.event_id)
                self._on_lost(call, message)
                continue
            self._on_called(call, message)

    async def _send(self, call: Call, connection: AsyncConnection) -> None:
        """``Applier.send_async``, cut at the presence deadline: a call cut is concluded as
        busy (it comes back a second later, its attempt unspent)."""
        if self._presence is None:
            await self._applier.send_async(
                call, connection=connection, fence=self._fence, budget=self._wait_for_budget
            )
            return
        cut = asyncio.timeout_at(self._presence.valid_until)
        try:
            async with cut:
                self._cuts.add(cut)
                try:
                    await self._applier.send_async(
                        call, connection=connection, fence=self._fence, budget=self._wait_for_budget
                    )
                finally:
                    self._cuts.discard(cut)
        except TimeoutError:
            if not cut.expired():
                raise
            # Already left by the applier, as every call that was interrupted.
            call.failure = RelationshipBusy(
                f"relationship {call.relationship.name}: the call was cut, this worker's presence "
                "in Redis may have expired"
            )

    async def _wait_for_budget(self, tenant: str) -> None:
        """``RateBudget.wait`` in the loop, its reservation batched with the lanes about to
        call at the same time."""
        budget = self._budget
        if budget is None or self._reservations is None or not budget.applies(tenant):
            return
        started = time.monotonic()
        await asyncio.sleep(budget.paused_for(tenant))
        reservation: Reservation = await self._reservations.ask(tenant)
        if not reservation.reserved:
            raise reservation.refusal(tenant)
        await asyncio.sleep(reservation.wait_seconds)
        await asyncio.sleep(budget.spaced(tenant))
        metrics.API_RATE_WAIT_SECONDS.observe(time.monotonic() - started)

    async def _fence(self, hold: Hold, lease_seconds: float) -> None:
        """``Ledger.fence`` for one hold, batched with the lanes about to call at the same time."""
        failure = await self._fences.ask((hold, lease_seconds))
        if failure is not None:
            raise failure

    def _fence_all(self, requests: list[tuple[Hold, float]]) -> list[RelationshipBusy | None]:
        lease_seconds = max(lease for _, lease in requests)
        return self._applier.ledger.fence_all(
            [hold for hold, _ in requests], lease_seconds=lease_seconds
        )
