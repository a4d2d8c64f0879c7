"""Ctrl-C as a request to stop between two steps, never in the middle of one.

Python's default turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be:
often inside py-amqp, halfway through reading or writing a frame. The connection is then out of
step with the broker, and the channel close on the way out waits for an answer that never comes:
the command hangs instead of stopping. Within ``stop_requested`` SIGINT only raises a flag that
the command reads between two steps; it then settles what it holds and exits with
``EXIT_INTERRUPTED``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT


class StopRequest:
    """Whether the operator asked to stop; callable, so it can be handed on as ``stop``."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            # The operator insists: leave now. Whatever was not acknowledged goes back to its
            # queue when the broker sees the connection drop, so this loses nothing either.
            os._exit(EXIT_INTERRUPTED)
        self.requested = True


@contextmanager
def stop_requested() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT sets ``requested``; a second one exits at once.

    The previous handler comes back when the block ends. Install it only around work that checks
    the flag often: a blocking prompt would no longer be interrupted.
    """
    request = StopRequest()
    previous = signal.signal(signal.SIGINT, request._on_signal)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
