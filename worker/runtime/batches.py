"""Work in batches, for one round trip per batch: taken from a queue by a thread
(``take_batch``), or asked for by an event loop's coroutines (``RoundTrips``)."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def take_batch(
    source: queue.SimpleQueue[T], *, wait: float | None, gather: float, most: int
) -> list[T]:
    """Waits up to ``wait`` seconds (None: for ever) for a first item, then gathers what else
    arrives within ``gather`` seconds, up to ``most`` items. Empty if nothing came."""
    try:
        batch = [source.get(timeout=wait)]
    except queue.Empty:
        return []
    until = time.monotonic() + gather
    while len(batch) < most:
        left = until - time.monotonic()
        try:
            batch.append(source.get(timeout=left) if left > 0 else source.get_nowait())
        except queue.Empty:
            break
    return batch


class RoundTrips(Generic[T, R]):
    """Requests made in an event loop, answered in batches: every request made while a round
    trip is under way waits for the next one, which answers all of them in one call of ``send``
    (the requests, in order, to their answers, in the same order). ``send`` runs in a thread of
    its own, so a slow round trip delays the requests it answers, never the loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Callable[[list[T]], list[R]], *, name: str
    ) -> None:
        self._loop = loop
        self._send = send
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._sending = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def ask(self, request: T) -> R:
        """The answer to ``request``; what ``send`` raised, if it did."""
        answer: asyncio.Future[R] = self._loop.create_future()
        self._waiting.append((request, answer))
        if not self._sending:
            self._send_waiting()
        return await answer

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        self._sending = True
        requests = [request for request, _ in batch]

        def answered(done: asyncio.Future[list[R]]) -> None:
            self._sending = False
            error = done.exception()
            for index, (_, answer) in enumerate(batch):
                if answer.cancelled():
                    continue
                if error is not None:
                    answer.set_exception(error)
                else:
                    answer.set_result(done.result()[index])
            if self._waiting:
                self._send_waiting()

        self._loop.run_in_executor(self._thread, self._send, requests).add_done_callback(answered)

    def run_soon(self, work: Callable[[], None]) -> None:
        """``work`` in the round trips' thread, between two of them."""
        self._loop.run_in_executor(self._thread, work)
