"""The one queue-depth reader, on the real broker: what each queue holds, None for a queue the
broker does not have (the others still read), and nothing created by reading."""

from __future__ import annotations

import math

import amqp
from kombu import Connection

from tests.conftest import throwaway_vhost
from worker.amqp.queue_depths import QueueState, read_queue, read_queue_depths
from worker.constants import BACKFILL_QUEUE, DELAY_QUEUE_PREFIX, EVENTS_QUEUE, TASKS_QUEUE
from worker.observability import metrics
from worker.runtime.probes import record_queue_depths


def _queue_with(connection: Connection, queue: str, messages: int) -> None:
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True, auto_delete=False)
    for n in range(messages):
        channel.basic_publish(amqp.Message(f"m{n}"), exchange="", routing_key=queue)
    channel.close()


def test_given_some_queues_missing_then_each_present_one_is_read_and_none_is_created() -> None:
    with throwaway_vhost("ccsync-depths-") as url, Connection(url) as connection:
        # Given a broker with ccsync.events (2 messages), ccsync.backfill (3) and level 3 of the
        # delay ladder (1), only
        _queue_with(connection, EVENTS_QUEUE, 2)
        _queue_with(connection, BACKFILL_QUEUE, 3)
        _queue_with(connection, f"{DELAY_QUEUE_PREFIX}3", 1)

        # When the depths are read
        depths = read_queue_depths(connection)

        # Then the queues present are counted and the missing ones are None, not a failure
        assert (depths.events, depths.backfill, depths.tasks, depths.dead_letters) == (
            2,
            3,
            None,
            None,
        )
        assert depths.delay_levels == {3: 1} and depths.delayed == 1
        # And reading created nothing
        assert read_queue(connection, TASKS_QUEUE) is None
        assert read_queue(connection, EVENTS_QUEUE) == QueueState(messages=2, consumers=0)

        # And the gauges say what is known: the events' depth, the missing queues' NaN
        record_queue_depths(depths)
        assert metrics.QUEUE_MESSAGES.labels(EVENTS_QUEUE)._value.get() == 2
        assert metrics.QUEUE_MESSAGES.labels(BACKFILL_QUEUE)._value.get() == 3
        assert math.isnan(metrics.QUEUE_MESSAGES.labels(TASKS_QUEUE)._value.get())
        assert metrics.DELAY_LADDER_MESSAGES._value.get() == 1
