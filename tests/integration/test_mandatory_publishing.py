"""Issue 15, item 5: the worker's own publishes are mandatory.

A dead letter or a retry that no queue takes (an operator deleted or recreated a queue) would be
confirmed by RabbitMQ and dropped. The worker must see the return, declare its topology again and
publish once more, and acknowledge the source message only after that.
"""

from __future__ import annotations

import json

import amqp
import pytest

from tests.integration.events import native
from tests.integration.producer import Producer, connect, queue_depth, read_dead_letters
from tests.integration.waiting import wait_until
from worker.amqp.topology import delay_routing_key
from worker.constants import DEAD_LETTER_QUEUE, DELAY_LEVELS, DELAY_QUEUE_PREFIX
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

# The ladder's level of 8 ticks (800 ms): the highest one a delay of 1.0 to 1.1 s passes through.
RETRY_LEVEL = 3


def _delete_queue(broker_url: str, queue: str) -> None:
    connection = connect(broker_url)
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


def _exists(broker_url: str, queue: str) -> bool:
    try:
        queue_depth(broker_url, queue)
    except amqp.exceptions.NotFound:
        return False
    return True


def test_given_the_dead_letter_queue_deleted_then_an_invalid_event_still_ends_in_it(
    worker: LocalWorker, producer: Producer, broker_url: str
) -> None:
    # Given an operator deleted ccsync.dead-letter while the worker runs
    _delete_queue(broker_url, DEAD_LETTER_QUEUE)

    # When a producer publishes an invalid event
    body = b'{"eventId": "e-mandatory", "customerId": '
    producer.publish(body, "application/json")

    # Then the worker declares its queue again and the dead letter is in it, not dropped
    wait_until(lambda: _exists(broker_url, DEAD_LETTER_QUEUE), timeout=15, what="the queue again")
    letters = read_dead_letters(broker_url, expected=1)
    assert [letter.body for letter in letters] == [body]
    assert letters[0].headers["x-ccsync-reason"] == "invalid-event"
    assert worker.alive


def test_given_a_delay_queue_deleted_then_a_retry_still_comes_back(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    # Given an event whose first call fails, retried after 1 s (1.0 to 1.1 s with the tests'
    # jitter: 10 or 11 ticks, so its retry enters the ladder at the queue of 8 ticks)
    event = native(identifier="AFTER-A-RETRY")
    sandbox.add_faults(event["customerId"], {"status": 503})
    assert delay_routing_key(1.0).split(".")[DELAY_LEVELS - 1 - RETRY_LEVEL] == "1"

    # When an operator deleted that delay queue, and the event is published
    _delete_queue(broker_url, f"{DELAY_QUEUE_PREFIX}{RETRY_LEVEL}")
    producer.publish(json.dumps(event).encode(), "application/json")

    # Then the retry is not dropped: the event is applied on its second attempt
    wait_until(
        lambda: any(c["relationships"] == {"self": "AFTER-A-RETRY"} for c in sandbox.state()),
        timeout=30,
        what=f"the event retried through the re-declared {DELAY_QUEUE_PREFIX}{RETRY_LEVEL}",
    )
