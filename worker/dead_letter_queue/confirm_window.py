"""Publishing in confirmed batches: the half of a move that must succeed before the other half.

One confirm per message costs a round trip each; publishing a window and then waiting for its
confirms costs one wait per window, and is just as safe, because nothing is removed from its
source until its own copy is confirmed (the figures are in docs/dead-letters.md). Messages
go out ``mandatory``: a message no queue would take comes back (basic.return) and counts as not
published, whatever the confirm says. A return names no delivery tag, and one confirm may cover
many messages, so each message carries its own ``message_id`` (the window's id and its tag): a
return is matched to its message by it, never to whichever confirm comes next.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
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
        self._id = uuid.uuid4().hex
        self._next_tag = 1
        self._pending: dict[int, T] = {}
        self._returned: set[int] = set()
        self._confirmed: list[T] = []
        self._failed: list[T] = []

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
        any other basic ``properties`` (message id, timestamp...) besides; without
        ``properties``, with the window's message id, by which a return is matched."""
        message = self._channel.prepare_message(
            envelope.body,
            content_type=envelope.content_type,
            content_encoding=envelope.content_encoding,
            headers=dict(envelope.headers if headers is None else headers),
            properties=(
                # The window's own message id, by which a return is matched to its message;
                # properties given are kept as they are (a return then fails every message
                # pending: a dead letter put back must stay what it was).
                {"message_id": f"{self._id}-{self._next_tag}", "delivery_mode": 2}
                if properties is None
                else {**properties, "delivery_mode": 2}
            ),
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

    def _take(self, delivery_tag: int, multiple: bool) -> list[int]:
        tags = [tag for tag in self._pending if tag <= delivery_tag] if multiple else [delivery_tag]
        return [tag for tag in tags if tag in self._pending]

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        # The broker returns a message before it confirms it: a returned one is known here.
        for tag in self._take(delivery_tag, multiple):
            token = self._pending.pop(tag)
            if tag in self._returned:
                self._returned.discard(tag)
                self._failed.append(token)
            else:
                self._confirmed.append(token)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for tag in self._take(delivery_tag, multiple):
            self._returned.discard(tag)
            self._failed.append(self._pending.pop(tag))

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        window, _, tag = str(message.properties.get("message_id", "")).rpartition("-")
        if window == self._id and tag.isdigit():
            self._returned.add(int(tag))
        else:
            # Not one of ours as sent: every message not confirmed yet counts as returned (a
            # duplicate is harmless, a loss not).
            self._returned.update(self._pending)
