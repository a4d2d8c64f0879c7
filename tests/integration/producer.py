"""A producer as the CRM/ERP side would write one: py-amqp, nothing of ccsync or Celery.

Also the tests' window on the queues: reading dead letters and purging between tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
from kombu import Connection as KombuConnection

from worker.amqp.queue_depths import QueueState, read_queue
from worker.constants import DEAD_LETTER_QUEUE
from worker.dead_letter_queue.reading import hold

EXCHANGE = "customer-events"
ROUTING_KEY = "customer.internal-identifier.changed"


def connect(broker_url: str) -> amqp.Connection:
    parts = urlsplit(broker_url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
        confirm_publish=True,
    )
    connection.connect()
    return connection


def publish_burst(
    broker_url: str, events: Iterable[Mapping[str, Any]], routing_key: str = ROUTING_KEY
) -> None:
    """Native events all at once, as a bulk sync or a burst of producers would: persistent,
    unconfirmed, on one channel (the broker has them once the connection closed cleanly)."""
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        for event in events:
            channel.basic_publish(
                amqp.Message(
                    json.dumps(event).encode(), content_type="application/json", delivery_mode=2
                ),
                exchange=EXCHANGE,
                routing_key=routing_key,
            )
    finally:
        connection.close()


class Producer:
    def __init__(self, broker_url: str) -> None:
        self.connection = connect(broker_url)
        self.channel = self.connection.channel()
        self.channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)

    def publish(
        self,
        body: bytes,
        content_type: str | None = "application/json",
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        properties: dict[str, Any] = {"delivery_mode": 2}
        if content_type is not None:
            properties["content_type"] = content_type
        if headers:
            properties["application_headers"] = dict(headers)
        self.channel.basic_publish(
            amqp.Message(body, **properties), exchange=EXCHANGE, routing_key=ROUTING_KEY
        )

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class Letter:
    body: bytes
    content_type: str | None
    headers: dict[str, Any]


def read_dead_letters(broker_url: str, expected: int, timeout: float = 30.0) -> list[Letter]:
    """Takes dead letters out of ccsync.dead-letter until ``expected`` arrived or time is up."""
    letters: list[Letter] = []
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while len(letters) < expected and time.monotonic() < deadline:
            message = channel.basic_get("ccsync.dead-letter", no_ack=True)
            if message is None:
                time.sleep(0.1)
                continue
            letters.append(
                Letter(
                    bytes(message.body),
                    message.properties.get("content_type"),
                    dict(message.properties.get("application_headers") or {}),
                )
            )
    finally:
        connection.close()
    return letters


def queue_depth(broker_url: str, queue: str) -> int:
    """Ready messages in ``queue``. The dead-letter queue is counted exactly, by a pass that puts
    every dead letter back: a quorum queue's declared count lags behind messages just returned
    (a killed reader's) or published (a reader's put back)."""
    if queue == DEAD_LETTER_QUEUE:
        with KombuConnection(broker_url) as dead_letters, hold(dead_letters) as held:
            return held.total
    return _declared(broker_url, queue).messages


def consumer_count(broker_url: str, queue: str) -> int:
    """Consumers of ``queue``, as RabbitMQ counts them."""
    return _declared(broker_url, queue).consumers


def _declared(broker_url: str, queue: str) -> QueueState:
    """What the broker says of ``queue`` (which must exist), read as ccsync reads it."""
    connection = connect(broker_url)
    try:
        state = read_queue(connection, queue)
    finally:
        connection.close()
    assert state is not None, f"the broker has no queue {queue}"
    return state


def purge(broker_url: str, *queues: str) -> None:
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_purge(queue)
    finally:
        connection.close()
