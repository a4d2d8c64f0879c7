"""Issue 25, item 7: a message the broker returns (no queue took it) fails, and only that one.

``ConfirmWindow`` (replay, transfer) publishes many messages before it waits for their confirms;
the broker confirms several at once and returns the unroutable ones just before their confirms.
Each return must be matched to its own message, never to whichever confirm comes next.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue

from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.processing.dead_letters import Envelope

#: Messages published in one window; every third goes where no queue is bound.
MESSAGES = 90


@pytest.fixture
def connection(broker_url: str) -> Iterator[Connection]:
    with Connection(broker_url) as opened:
        yield opened


def test_given_unroutable_publishes_among_routable_ones_then_exactly_those_fail(
    connection: Connection,
) -> None:
    # Given an exchange with one queue bound, under a routing key of its own
    name = f"confirm-returns-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="direct", durable=False, auto_delete=True)
    queue = Queue(name, exchange, routing_key="routable", durable=False, auto_delete=True)
    channel = connection.channel()
    queue(channel).declare()
    window: ConfirmWindow[int] = ConfirmWindow(connection, timeout=30)
    try:
        # When a window of messages goes out, every third under a key no queue is bound to
        unroutable = {token for token in range(MESSAGES) if token % 3 == 1}
        for token in range(MESSAGES):
            window.publish(
                token,
                Envelope(f"message {token}".encode(), "text/plain", None),
                exchange=name,
                routing_key="nowhere" if token in unroutable else "routable",
            )
        confirmed, failed = window.settle()

        # Then exactly the unroutable ones failed, and every routable one is confirmed
        assert sorted(failed) == sorted(unroutable)
        assert sorted(confirmed) == sorted(set(range(MESSAGES)) - unroutable)
        # and the queue holds exactly the confirmed ones
        assert queue(channel).queue_declare(passive=True).message_count == len(confirmed)
    finally:
        window.close()
        queue(channel).delete()
        channel.close()
