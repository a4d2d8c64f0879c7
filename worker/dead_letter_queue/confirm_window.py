"""Publishing in confirmed batches: the half of a move that must succeed before the other half.

One confirm per message costs a round trip each; publishing a window and then waiting for its
confirms costs one wait per window, and is just as safe, because nothing is removed from its
source until its own copy is confirmed (the figures are in README.md, "Dead letters"). Messages
go out ``mandatory``: a message no queue would take comes back (basic.return) and counts as not
published, whatever the confirm says.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from kombu import Connection

from worker.dead_letter_queue.errors import DeadLetterError
from worker.processing.dead_letters import Envelope

T = TypeVar("T")

#: Seconds to wait for the confirms of what was published before giving up (nothing is removed).
DEFAULT_CONFIRM_TIMEOUT = 30.0


class ConfirmWindow(Generic[T]):
    """Publishes a window of messages on a confirm-mode channel of its own; ``settle`` says which
    publishes are safe.

    Each publish carries a token of the caller's (a delivery tag to ack, say), handed back by
    ``settle`` as confirmed or failed.
    """

    def __init__(self, connection: Connection, timeout: float = DEFAULT_CONFIRM_TIMEOUT) -> None:
        self._timeout = timeout
        self._channel = connection.channel()
        self._channel.confirm_select()
        self._channel.events["basic_ack"].add(self._on_ack)
        self._channel.events["basic_nack"].add(self._on_nack)
        self._channel.events["basic_return"].add(self._on_return)
        self._next_tag = 1
        self._pending: dict[int, T] = {}
        self._confirmed: list[T] = []
        self._failed: list[T] = []
        self._returns_unmatched = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def publish(
        self,
        token: T,
        envelope: Envelope,
        *,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Publishes ``envelope`` persistent, with ``headers`` instead of its own when given and
        any other basic ``properties`` (message id, timestamp...) besides."""
        message = self._channel.prepare_message(
            envelope.body,
            content_type=envelope.content_type,
            content_encoding=envelope.content_encoding,
            headers=dict(envelope.headers if headers is None else headers),
            properties={**(properties or {}), "delivery_mode": 2},
        )
        self._pending[self._next_tag] = token
        self._next_tag += 1
        self._channel.basic_publish(
            message, exchange=exchange, routing_key=routing_key, mandatory=True
        )

    def settle(self, *, timeout: float | None = None) -> tuple[list[T], list[T]]:
        """Waits for every outstanding confirm; returns (confirmed, failed) since the last call.

        Raises ``DeadLetterError`` when they did not all come within ``timeout`` seconds (the
        window's own timeout when None); those confirmed meanwhile are still collected later.
        """
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadLetterError(
                    f"the broker did not confirm {len(self._pending)} publish(es) within "
                    f"{timeout:.0f}s; their sources stay where they were"
                )
            with contextlib.suppress(socket.timeout):
                self._channel.connection.drain_events(timeout=min(remaining, 1.0))
        return self.collect()

    def collect(self) -> tuple[list[T], list[T]]:
        """(confirmed, failed) since the last call, without waiting.

        Confirms also arrive while the connection waits for something else (a basic.get), so
        callers collect after each publish to act on them early.
        """
        confirmed, failed = self._confirmed, self._failed
        self._confirmed, self._failed = [], []
        return confirmed, failed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.close()

    def _take(self, delivery_tag: int, multiple: bool) -> list[T]:
        tags = [tag for tag in self._pending if tag <= delivery_tag] if multiple else [delivery_tag]
        return [self._pending.pop(tag) for tag in tags if tag in self._pending]

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        tokens = self._take(delivery_tag, multiple)
        if self._returns_unmatched:
            # A return comes just before the confirm of its own message, but a multiple confirm
            # may cover several: all of them count as failed (a duplicate is harmless, a loss not).
            self._returns_unmatched = 0
            self._failed.extend(tokens)
        else:
            self._confirmed.extend(tokens)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._failed.extend(self._take(delivery_tag, multiple))

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returns_unmatched += 1
