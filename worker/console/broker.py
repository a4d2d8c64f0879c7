"""The console's connections to RabbitMQ: one per page or job, opened within a deadline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kombu import Connection

from worker.amqp.connection import broker_connection, connect_within
from worker.console.config import ConsoleConfig


@contextlib.contextmanager
def connected(config: ConsoleConfig) -> Iterator[Connection]:
    """A broker connection, open, or ``BrokerUnreachable`` (its URL masked) in one line.

    One per request: kombu connections are not shared between threads, and pages and jobs run
    on several.
    """
    with broker_connection(config.settings) as connection:
        connect_within(connection, config.broker_timeout)
        yield connection
