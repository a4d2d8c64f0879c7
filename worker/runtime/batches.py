"""Taking work from a queue in batches, for the threads that do one round trip per batch."""

from __future__ import annotations

import queue
import time
from typing import TypeVar

T = TypeVar("T")


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
