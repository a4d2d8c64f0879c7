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

import logging
from collections.abc import Callable

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

# Replicated like the others, so a dead letter outlives the node that holds it. Operators' tools
# read it with basic.get and hand everything back (``worker.dead_letter_queue.reading``): each pass
# raises the quorum queue's delivery count, so the queue must have no delivery limit and no
# dead-lettering of its own (RabbitMQ 3.10 takes ``x-delivery-limit: -1`` as a limit of zero and
# drops a dead letter on its first return). A stream would not do: no basic.get, no removal of one
# message. Brokers holding the classic queue of earlier versions: ``ccsync topology --migrate``.
dead_letter_queue = Queue(
    DEAD_LETTER_QUEUE,
    exchange=dead_letter_exchange,
    routing_key=DEAD_LETTER_QUEUE,
    durable=True,
    queue_arguments=_QUORUM,
)


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
    channel = connection.default_channel
    for exchange in (events_exchange, tasks_exchange, dead_letter_exchange, delay_release_exchange):
        exchange(channel).declare()
    for queue in (events_queue, backfill_queue, tasks_queue, dead_letter_queue):
        queue(channel).declare()
    for level in range(DELAY_LEVELS):
        delay_queue(level)(channel).declare()
        # Bit ``level`` is 0: skip this level's queue and go on down the ladder.
        delay_exchange(level - 1)(channel).bind_to(
            exchange=delay_exchange(level).name, routing_key=_bit_pattern(level, "0")
        )
