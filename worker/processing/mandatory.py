"""Mandatory publishing on a confirming channel: a message no queue takes is a failure.

RabbitMQ confirms a message that it routed to no queue, and drops it. Published ``mandatory``,
the message first comes back (basic.return), before that confirm; the channel's publish, which
waits for the confirm, has then seen the return. The dead-letter tools' ``ConfirmWindow`` sees
returns on a channel of its own, matching each to its message.

Free of broker libraries: the channel is py-amqp's, used through its ``events`` only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from worker.exceptions import CcsyncError

_COUNTER_ATTRIBUTE = "_ccsync_returns"


class Unroutable(CcsyncError):
    """The broker returned a mandatory message: no queue took it (a queue or a binding is
    missing). The message is not published; its source must not be acknowledged."""


class _ReturnCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self.count += 1


def _counter(channel: Any) -> _ReturnCounter:
    # One listener per channel for its whole life: without any, py-amqp raises the return out
    # of the publish, and the confirm that follows would be taken for the next message's.
    counter: _ReturnCounter | None = getattr(channel, _COUNTER_ATTRIBUTE, None)
    if counter is None:
        counter = _ReturnCounter()
        channel.events["basic_return"].add(counter)
        setattr(channel, _COUNTER_ATTRIBUTE, counter)
    return counter


@contextmanager
def refused_if_returned(channel: Any, what: str) -> Iterator[None]:
    """Around mandatory publishes on ``channel`` that each wait for their confirm (one thread
    at a time on it): raises ``Unroutable`` naming ``what`` when the broker returned any."""
    counter = _counter(channel)
    before = counter.count
    yield
    if counter.count != before:
        raise Unroutable(f"{what}: no queue took it (the broker returned it)")
