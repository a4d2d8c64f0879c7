"""Moving an existing deployment's dead-letter queue from classic to quorum, losing nothing.

RabbitMQ never changes a queue's type in place: declaring the quorum ``ccsync.dead-letter`` on a
broker that holds the classic one of earlier versions fails (PRECONDITION_FAILED). The steps, each
message moved by publishing it (persistent, confirmed) and only then acknowledging the original:

1. declare ``ccsync.dead-letter.migrating`` (quorum) and move every dead letter into it;
2. bind it to the ``ccsync.dead-letter`` exchange, unbind the classic queue, move what arrived
   meanwhile, and delete the classic queue once empty (``if-empty``: if a dead letter slipped in,
   the move is repeated);
3. declare the quorum ``ccsync.dead-letter`` (bound to the exchange), unbind the migrating queue,
   move everything back, and delete the migrating queue, by then unbound and empty.

A dead letter made while a worker runs is routed to at least one of the queues at every moment,
and to both for the instant between a bind and the next unbind: such a dead letter may end up
twice (its replay is then absorbed by the ledger as a duplicate). Interrupted at any point, the
migration can be run again and resumes from where the messages are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp import Message as AmqpMessage
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from worker.amqp.queue_depths import read_queue
from worker.amqp.topology import dead_letter_exchange, dead_letter_queue
from worker.constants import DEAD_LETTER_QUEUE, HEADER_DELIVERY_COUNT

log = logging.getLogger(__name__)

#: The queue that holds the dead letters while the dead-letter queue changes type.
MIGRATION_QUEUE = f"{DEAD_LETTER_QUEUE}.migrating"
#: Moves of what arrived meanwhile before the classic queue is given up as never empty.
MAX_DRAIN_ROUNDS = 20


@dataclass
class MigrationReport:
    already_quorum: bool = False
    moved_out: int = 0
    moved_back: int = 0


def migrate_dead_letter_queue(
    connection: Connection, *, on_progress: Callable[[str], None] = log.info
) -> MigrationReport:
    """Makes ``ccsync.dead-letter`` the quorum queue of this version, moving its dead letters.

    Idempotent: on a broker already migrated (or new) it only declares the queue and moves back
    anything a previous interrupted run left in the migrating queue.
    """
    report = MigrationReport()
    if _is_quorum(connection):
        report.already_quorum = True
    else:
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
            try:
                channel.queue_delete(DEAD_LETTER_QUEUE, if_empty=True)
                break
            except PreconditionFailed:
                channel = _channel(connection)
        else:
            raise RuntimeError(f"{DEAD_LETTER_QUEUE} never stayed empty; run the migration again")
        on_progress(f"deleted the classic {DEAD_LETTER_QUEUE}")
    if read_queue(connection, MIGRATION_QUEUE) is None:
        return report
    channel = _channel(connection)
    dead_letter_queue(channel).declare()
    channel.queue_unbind(MIGRATION_QUEUE, dead_letter_exchange.name, DEAD_LETTER_QUEUE)
    report.moved_back = _move(channel, MIGRATION_QUEUE, DEAD_LETTER_QUEUE)
    # Unbound and drained, nothing can arrive any more (quorum queues refuse ``if-empty``).
    channel.queue_delete(MIGRATION_QUEUE)
    on_progress(f"moved {report.moved_back} dead letters into the quorum {DEAD_LETTER_QUEUE}")
    return report


def _channel(connection: Connection) -> Any:
    channel = connection.channel()
    channel.auto_decode = False  # bodies move as the exact bytes they are
    return channel


def _is_quorum(connection: Connection) -> bool:
    """Declares the quorum dead-letter queue: False when the broker holds the classic one."""
    channel = connection.channel()
    try:
        dead_letter_queue(channel).declare()
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
