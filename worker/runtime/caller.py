"""The calls of first attempts: one event-loop thread keeps all of them in flight.

The gate hands each event whose relationship it holds to ``Caller.put``. One thread runs an
asyncio loop with a fixed number of lanes (the worker's calls in flight); a lane takes the next
event, fences its lock and makes its call (``Applier.send_async``) through a connection of its
own, then hands it to the settler. Hundreds of calls can wait on CloudCockpit at once for the
price of a coroutine each, where a thread per call costs a thread switch, and a turn of the GIL,
at every step of every call (the measurements are in README.md, "Concurrency model").

Fences are batched: every lane about to call while a fence round trip is under way waits for the
next one, which serves all of them in one script call (``Ledger.fence_all``). The round trip runs
in a thread of its own, so a slow Redis delays the calls it fences, never the calls in flight.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kombu.message import Message

from worker.cloudcockpit.connection import AsyncConnection
from worker.exceptions import RelationshipBusy
from worker.processing.applier import Applier
from worker.processing.attempts import Call
from worker.processing.ledger import Hold

log = logging.getLogger(__name__)

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio on every async request to learn which event loop runs it; when
    # sniffio is not installed, each of those imports searches sys.path anew, which costs more
    # CPU than the rest of the request. None in sys.modules makes that import fail at once,
    # with the same answer: asyncio.
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

CallHandler = Callable[[Call, Message], None]


class Caller:
    """Calls CloudCockpit for each event put here, ``lanes`` at a time, in one thread.

    ``on_taken`` runs when a lane takes an event (the gate counts the events waiting for one),
    ``on_called`` gets each call made (or not made: verdict, failure), ``on_lost`` the message of
    a call that failed on a bug; all three run in the caller's thread. ``make_connection``
    makes a lane's connection, in that thread, on the lane's first call.
    """

    def __init__(
        self,
        *,
        applier: Applier,
        lanes: int,
        make_connection: Callable[[], AsyncConnection],
        on_taken: Callable[[], None],
        on_called: CallHandler,
        on_lost: Callable[[Message], None],
    ) -> None:
        self._applier = applier
        self._make_connection = make_connection
        self._on_taken = on_taken
        self._on_called = on_called
        self._on_lost = on_lost
        self._loop = asyncio.new_event_loop()
        # Events no lane has taken yet, and lanes waiting for one, the last to wait first: under
        # a light load the same few lanes (and their connections, kept alive) do the calls.
        self._pending: deque[tuple[Call, Message]] = deque()
        self._idle: list[asyncio.Future[tuple[Call, Message]]] = []
        # Filled by other threads; the loop is woken once per batch of arrivals, not per event.
        self._arrivals: deque[tuple[Call, Message]] = deque()
        self._wake_pending = False
        # Fences asked for while one round trip is under way, sent together after it.
        self._fences: list[tuple[Hold, asyncio.Future[RelationshipBusy | None]]] = []
        self._fencing = False
        self._fencer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccsync-fence")
        self._lanes = lanes
        self._thread = threading.Thread(target=self._run, name="ccsync-caller", daemon=True)
        self._thread.start()

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
            else:
                self._pending.append(item)

    async def _next(self) -> tuple[Call, Message]:
        if self._pending:
            return self._pending.popleft()
        waiter: asyncio.Future[tuple[Call, Message]] = self._loop.create_future()
        self._idle.append(waiter)
        return await waiter

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        for _ in range(self._lanes):
            self._loop.create_task(self._lane())
        self._loop.run_forever()

    async def _lane(self) -> None:
        connection: AsyncConnection | None = None
        while True:
            call, message = await self._next()
            self._on_taken()
            try:
                if connection is None:
                    connection = self._make_connection()
                await self._applier.send_async(call, connection=connection, fence=self._fence)
            except Exception:
                log.exception("event %s: no outcome could be recorded", call.attempt.event.event_id)
                call.abandon()
                self._on_lost(message)
                continue
            self._on_called(call, message)

    async def _fence(self, hold: Hold, lease_seconds: float) -> None:
        """``Ledger.fence`` for one hold, batched with the lanes about to call at the same time."""
        refused: asyncio.Future[RelationshipBusy | None] = self._loop.create_future()
        self._fences.append((hold, refused))
        if not self._fencing:
            self._send_fences(lease_seconds)
        failure = await refused
        if failure is not None:
            raise failure

    def _send_fences(self, lease_seconds: float) -> None:
        batch, self._fences = self._fences, []
        self._fencing = True
        holds = [hold for hold, _ in batch]

        def fence_all() -> list[RelationshipBusy | None]:
            return self._applier.ledger.fence_all(holds, lease_seconds=lease_seconds)

        def answered(done: asyncio.Future[list[RelationshipBusy | None]]) -> None:
            self._fencing = False
            error = done.exception()
            for index, (_, refused) in enumerate(batch):
                if refused.cancelled():
                    continue
                if error is not None:
                    refused.set_exception(error)
                else:
                    refused.set_result(done.result()[index])
            if self._fences:
                self._send_fences(lease_seconds)

        self._loop.run_in_executor(self._fencer, fence_all).add_done_callback(answered)
