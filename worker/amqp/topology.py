"""The broker objects ccsync owns, declared idempotently at every start (contract section 2).

    customer-events (topic) --customer.internal-identifier.changed--> ccsync.events (quorum)
        read by the intake, which validates each event and makes its first attempt in the
        worker itself, or dead-letters it; only retries travel as tasks, through the ladder
    customer-events (topic) --customer.internal-identifier.changed.backfill--> ccsync.backfill
        (quorum): bulk traffic, read by the same intake, whose calls serve live events first
    ccsync.tasks (topic)    --ccsync.tasks--> ccsync.tasks (quorum), the Celery task queue
    ccsync.dead-letter (direct) --> ccsync.dead-letter (quorum), read by ``ccsync dlq``

Broker-held backoff, the ladder of delay queues (the design of Celery's native delayed delivery,
built here on the RabbitMQ we run): a waiting message carries its delay as binary digits in its
routing key, ``b21.b20.….b0.ccsync.tasks``, counted in ticks of 100 ms. Exchange
``ccsync.delay.N`` sends it to queue ``ccsync.delay.N`` when bit N is 1, else straight on to
exchange N-1. Queue N holds every message exactly 2**N ticks (a per-queue TTL, so the head
always expires first and a long delay never holds back a short one), then dead-letters it to
exchange N-1. Exchange ``ccsync.delay.release`` finally routes it by its last words back to
``ccsync.tasks``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Final

from amqp.exceptions import PreconditionFailed
from kombu import Connection, Exchange, Queue, binding

from worker.constants import (
    BACKFILL_QUEUE,
    BACKFILL_ROUTING_KEY,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DELAY_EXCHANGE_PREFIX,
    DELAY_LEVELS,
    DELAY_QUEUE_PREFIX,
    DELAY_RELEASE_EXCHANGE,
    DELAY_TICK_MS,
    EVENT_ROUTING_KEY,
    EVENTS_EXCHANGE,
    EVENTS_QUEUE,
    TASKS_EXCHANGE,
    TASKS_QUEUE,
)
from worker.exceptions import ConfigurationError
from worker.processing.mandatory import Unroutable

log = logging.getLogger(__name__)

events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
tasks_exchange = Exchange(TASKS_EXCHANGE, type="topic", durable=True)
dead_letter_exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
delay_release_exchange = Exchange(DELAY_RELEASE_EXCHANGE, type="topic", durable=True)

# Quorum queues count deliveries (x-delivery-count), which is how a message that keeps killing the
# worker is recognised. The producers' queue has no broker-side dead-lettering on purpose: ccsync
# dead-letters itself, with its headers; and RabbitMQ 3.10 crashes its dead-letter process on a
# producer's malformed x-death header, after which no at-least-once queue can be declared.
_QUORUM = {"x-queue-type": "quorum"}

events_queue = Queue(
    EVENTS_QUEUE,
    exchange=events_exchange,
    routing_key=EVENT_ROUTING_KEY,
    durable=True,
    queue_arguments=_QUORUM,
)

backfill_queue = Queue(
    BACKFILL_QUEUE,
    exchange=events_exchange,
    routing_key=BACKFILL_ROUTING_KEY,
    durable=True,
    queue_arguments=_QUORUM,
)

tasks_queue = Queue(
    TASKS_QUEUE,
    bindings=[
        binding(tasks_exchange, routing_key=TASKS_QUEUE),
        binding(delay_release_exchange, routing_key=f"#.{TASKS_QUEUE}"),
    ],
    durable=True,
    queue_arguments=_QUORUM,
)

#: The delivery limit the dead-letter queue declares: never reached, so that no broker default
#: applies (RabbitMQ 4 gives a quorum queue without one a limit of 20). Not -1: RabbitMQ 4 reads it
#: as no limit, but 3.10 as a limit of zero (a dead letter dropped the first time it is returned).
DEAD_LETTER_DELIVERY_LIMIT: Final = 2**31 - 1

# Replicated like the others, so a dead letter outlives the node that holds it. It dead-letters
# nowhere: a message it drops is gone. Operators' tools never hand a dead letter back, which a
# quorum queue would count against the delivery limit, whoever set it (a policy's lower limit
# beats the queue's own): they put back copies (``worker.dead_letter_queue.reading``). A stream
# would not do: no basic.get, no removal of one message. Brokers holding the classic queue of
# earlier versions, or the quorum queue without a delivery limit: ``ccsync topology --migrate``.
dead_letter_queue = Queue(
    DEAD_LETTER_QUEUE,
    exchange=dead_letter_exchange,
    routing_key=DEAD_LETTER_QUEUE,
    durable=True,
    queue_arguments={**_QUORUM, "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT},
)

#: The dead-letter queue as earlier versions declared it: quorum, without a delivery limit.
previous_dead_letter_queue = Queue(
    DEAD_LETTER_QUEUE,
    exchange=dead_letter_exchange,
    routing_key=DEAD_LETTER_QUEUE,
    durable=True,
    queue_arguments=_QUORUM,
)


def declare_dead_letter_queue(connection: Connection) -> bool:
    """Declares the dead-letter queue (and its exchange and binding), each time on a channel of
    its own; False, with a warning in the log, when the broker holds the quorum queue of earlier
    versions, which has no delivery limit of its own: the broker's default then applies (20 on
    RabbitMQ 4), and a dead letter a killed reader left to it more often is dropped.

    Raises ``PreconditionFailed`` when the broker holds another queue of that name (the classic
    one of older versions).
    """
    try:
        _declare_alone(connection, dead_letter_queue)
        return True
    except PreconditionFailed:
        _declare_alone(connection, previous_dead_letter_queue)
    log.warning(
        "%s has no delivery limit of its own: the broker's default applies (RabbitMQ 4: 20 "
        "returns) and can drop dead letters that killed readers left to it; run "
        "'ccsync topology --migrate' to declare it with one",
        DEAD_LETTER_QUEUE,
    )
    return False


def _declare_alone(connection: Connection, queue: Queue) -> None:
    """Declares ``queue`` on a channel of its own: a refusal closes that channel, no other."""
    channel = connection.channel()
    try:
        queue(channel).declare()
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def delay_exchange(level: int) -> Exchange:
    if level < 0:
        return delay_release_exchange
    return Exchange(f"{DELAY_EXCHANGE_PREFIX}{level}", type="topic", durable=True)


def delay_queue(level: int) -> Queue:
    return Queue(
        f"{DELAY_QUEUE_PREFIX}{level}",
        exchange=delay_exchange(level),
        routing_key=_bit_pattern(level, "1"),
        durable=True,
        queue_arguments={
            **_QUORUM,
            "x-message-ttl": (2**level) * DELAY_TICK_MS,
            "x-dead-letter-exchange": delay_exchange(level - 1).name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def _bit_pattern(level: int, bit: str) -> str:
    words = ["*"] * DELAY_LEVELS
    words[DELAY_LEVELS - 1 - level] = bit
    return ".".join(words) + ".#"


def delay_routing_key(seconds: float, destination: str = TASKS_QUEUE) -> str:
    """The routing key that brings a message back to ``destination`` after ``seconds``."""
    ticks = min(max(0, round(seconds * 1000 / DELAY_TICK_MS)), 2**DELAY_LEVELS - 1)
    bits = format(ticks, f"0{DELAY_LEVELS}b")
    return ".".join(bits) + f".{destination}"


def delay_entry_exchange() -> Exchange:
    return delay_exchange(DELAY_LEVELS - 1)


def declare_topology(connection: Connection) -> None:
    """Declare every exchange, queue and binding; safe to run while others run it too.

    ``ConfigurationError`` when the broker holds one of them with other arguments (a version of
    ccsync that declared it differently): RabbitMQ never changes a queue's arguments in place.
    """
    try:
        _declare(connection)
    except PreconditionFailed as exc:
        raise ConfigurationError(
            f"the broker's topology differs from this version's ({exc.reply_text}); "
            "'ccsync topology --migrate' moves a dead-letter queue of an earlier version to this "
            "one's form (docs/scaling.md: Migrating an existing deployment)"
        ) from None


def publish_declaring_topology(connection: Connection, publish: Callable[[], None]) -> None:
    """``publish()``, a mandatory publish on ``connection``; when no queue took its message (an
    operator deleted a queue or a binding), declare the topology on ``connection`` and publish
    once more.

    Raises ``Unroutable`` if the message comes back again: the caller must then not acknowledge
    its source, which the broker keeps and delivers again.
    """
    try:
        publish()
    except Unroutable as exc:
        log.warning("%s; declaring the topology again", exc)
        declare_topology(connection)
        publish()


def _declare(connection: Connection) -> None:
    declare_dead_letter_queue(connection)
    channel = connection.default_channel
    for exchange in (events_exchange, tasks_exchange, delay_release_exchange):
        exchange(channel).declare()
    for queue in (events_queue, backfill_queue, tasks_queue):
        queue(channel).declare()
    for level in range(DELAY_LEVELS):
        delay_queue(level)(channel).declare()
        # Bit ``level`` is 0: skip this level's queue and go on down the ladder.
        delay_exchange(level - 1)(channel).bind_to(
            exchange=delay_exchange(level).name, routing_key=_bit_pattern(level, "0")
        )
