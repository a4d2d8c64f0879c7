"""Moving an existing deployment's dead-letter queue to this version's form, losing nothing.

This version declares ``ccsync.dead-letter`` as a quorum queue with a delivery limit of its own
(``worker.amqp.topology``); earlier versions declared a classic queue, or a quorum queue without
that limit. RabbitMQ never changes a queue's type or arguments in place: declaring this version's
queue on a broker that holds another fails (PRECONDITION_FAILED). The steps, each message moved
by publishing it (persistent, confirmed) and only then acknowledging the original:

1. declare ``ccsync.dead-letter.migrating`` (quorum) and move every dead letter into it;
2. bind it to the ``ccsync.dead-letter`` exchange, unbind the old queue, move what arrived
   meanwhile, and delete the old queue once empty (a classic one with ``if-empty``, which quorum
   queues do not implement: one of those once it reports no message; if a dead letter slipped in,
   the move is repeated);
3. declare this version's ``ccsync.dead-letter`` (bound to the exchange), unbind the migrating
   queue, move everything back, and delete the migrating queue, by then unbound and empty.

A dead letter made while a worker runs is routed to at least one of the queues at every moment,
and to both for the instant between a bind and the next unbind: such a dead letter may end up
twice (its replay is then absorbed by the ledger as a duplicate). Dead letters an operator's tool
holds while it reads are not in any count: run the migration with the console and ``ccsync dlq``
stopped. Interrupted at any point, the migration can be run again and resumes from where the
messages are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp import Message as AmqpMessage
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Queue

from worker.amqp.queue_depths import read_queue
from worker.amqp.topology import (
    dead_letter_exchange,
    dead_letter_queue,
    previous_dead_letter_queue,
)
from worker.constants import DEAD_LETTER_QUEUE, HEADER_DELIVERY_COUNT

log = logging.getLogger(__name__)

#: The queue that holds the dead letters while the dead-letter queue changes type.
MIGRATION_QUEUE = f"{DEAD_LETTER_QUEUE}.migrating"
#: Moves of what arrived meanwhile before the classic queue is given up as never empty.
MAX_DRAIN_ROUNDS = 20


@dataclass
class MigrationReport:
    already_current: bool = False
    moved_out: int = 0
    moved_back: int = 0


def migrate_dead_letter_queue(
    connection: Connection, *, on_progress: Callable[[str], None] = log.info
) -> MigrationReport:
    """Makes ``ccsync.dead-letter`` the queue this version declares, moving its dead letters.

    Idempotent: on a broker already migrated (or new) it only declares the queue and moves back
    anything a previous interrupted run left in the migrating queue.
    """
    report = MigrationReport()
    if _is_current(connection):
        report.already_current = True
    else:
        old_is_quorum = _holds(connection, previous_dead_letter_queue)
        channel = _channel(connection)
        channel.queue_declare(
            MIGRATION_QUEUE,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "quorum"},
        )
        report.moved_out += _move(channel, DEAD_LETTER_QUEUE, MIGRATION_QUEUE)
        on_progress(f"moved {report.moved_out} dead letters to {MIGRATION_QUEUE}")
        # Bind the new before unbinding the old: a dead letter is never unroutable.
        channel.queue_bind(MIGRATION_QUEUE, dead_letter_exchange.name, DEAD_LETTER_QUEUE)
        channel.queue_unbind(DEAD_LETTER_QUEUE, dead_letter_exchange.name, DEAD_LETTER_QUEUE)
        for _ in range(MAX_DRAIN_ROUNDS):
            report.moved_out += _move(channel, DEAD_LETTER_QUEUE, MIGRATION_QUEUE)
            if old_is_quorum:
                # Unbound, it takes nothing new from the exchange; a count of zero is final.
                if channel.queue_declare(DEAD_LETTER_QUEUE, passive=True).message_count == 0:
                    channel.queue_delete(DEAD_LETTER_QUEUE)
                    break
                continue
            try:
                channel.queue_delete(DEAD_LETTER_QUEUE, if_empty=True)
                break
            except PreconditionFailed:
                channel = _channel(connection)
        else:
            raise RuntimeError(f"{DEAD_LETTER_QUEUE} never stayed empty; run the migration again")
        on_progress(f"deleted the previous {DEAD_LETTER_QUEUE}")
    if read_queue(connection, MIGRATION_QUEUE) is None:
        return report
    channel = _channel(connection)
    dead_letter_queue(channel).declare()
    channel.queue_unbind(MIGRATION_QUEUE, dead_letter_exchange.name, DEAD_LETTER_QUEUE)
    report.moved_back = _move(channel, MIGRATION_QUEUE, DEAD_LETTER_QUEUE)
    # Unbound and drained, nothing can arrive any more (quorum queues refuse ``if-empty``).
    channel.queue_delete(MIGRATION_QUEUE)
    on_progress(
        f"moved {report.moved_back} dead letters into the quorum {DEAD_LETTER_QUEUE}; "
        "the keeper (ccsync dlq keep, or ccsync console) moves them into the dead-letter store"
    )
    return report


def _channel(connection: Connection) -> Any:
    channel = connection.channel()
    channel.auto_decode = False  # bodies move as the exact bytes they are
    return channel


def _is_current(connection: Connection) -> bool:
    """Declares this version's dead-letter queue: False when the broker holds an earlier one."""
    return _holds(connection, dead_letter_queue)


def _holds(connection: Connection, queue: Queue) -> bool:
    """Declares ``queue``: False when the broker holds one of its name declared otherwise."""
    channel = connection.channel()
    try:
        queue(channel).declare()
    except PreconditionFailed:
        return False
    with contextlib.suppress(Exception):
        channel.close()
    return True


def _move(channel: Any, source: str, destination: str) -> int:
    """Every message of ``source`` published to ``destination`` and confirmed, then acked."""
    moved = 0
    while (message := channel.basic_get(queue=source, no_ack=False)) is not None:
        properties = dict(message.properties)
        headers = dict(properties.pop("application_headers", None) or {})
        # The new queue counts its deliveries anew.
        headers.pop(HEADER_DELIVERY_COUNT, None)
        properties["delivery_mode"] = 2
        copy = AmqpMessage(message.body, application_headers=headers, **properties)
        # Returns once the broker confirmed it; raises (the original stays) if it refused.
        channel.basic_publish_confirm(copy, exchange="", routing_key=destination, mandatory=True)
        channel.basic_ack(message.delivery_tag)
        moved += 1
    return moved
