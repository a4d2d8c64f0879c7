"""Reading dead letters never costs one, whatever delivery limit the broker puts on their queue,
and changes nothing about them: not their properties, not their order.

A quorum queue drops a message handed back more often than its delivery limit allows, and the
dead-letter queue has nowhere to dead-letter to. RabbitMQ 4 gives every quorum queue a limit of 20
by default; an operator's policy may set any other, and a policy's lower limit beats the queue's
own argument. Here a policy sets 2 (or 0), the keeper takes the dead letters in, and the CLI and
the console read them again and again: from the store, never from the queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from amqp import Message as AmqpMessage
from kombu import Connection

from tests.conftest import rabbitmqctl, throwaway_vhost
from tests.integration import test_dlq_support as support
from tests.integration.console_support import console_settings, log_in, serving
from worker.amqp.topology import declare_topology
from worker.console.letters import letter_key
from worker.constants import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    HEADER_DEAD_LETTERED_AT,
    HEADER_DELIVERY_COUNT,
)
from worker.dead_letter_queue.filters import DeadLetterFilter

pytestmark = pytest.mark.usefixtures("clean_environment")

#: Delivery limits of an operator's policy: 2, as measured in the issue (a dead letter handed back
#: three times is dropped), and 0 (dropped the first time).
POLICY_DELIVERY_LIMITS = (2, 0)
#: Reads of the queue, from the CLI and the console, in the test.
READS = 16


@pytest.fixture(params=POLICY_DELIVERY_LIMITS, ids=lambda limit: f"limit-{limit}")
def limited_vhost(request: pytest.FixtureRequest) -> Iterator[str]:
    """A vhost of its own whose dead-letter queue a policy gives a delivery limit."""
    with throwaway_vhost("ccsync-limit-") as url:
        with Connection(url) as connection:
            declare_topology(connection)
        vhost = unquote(urlsplit(url).path[1:])
        definition = json.dumps({"delivery-limit": request.param})
        pattern = f"^{DEAD_LETTER_QUEUE.replace('.', '[.]')}$"
        rabbitmqctl(
            "set_policy", "-p", vhost, "--apply-to", "queues", "dlq-limit", pattern, definition
        )
        yield url


def test_reading_the_queue_many_times_loses_nothing_under_a_delivery_limit_policy(
    limited_vhost: str,
) -> None:
    # Given five dead letters in a queue whose policy drops what is handed back too often, taken
    # into the store by the keeper
    seeds = [support.seed_for_event("retries-exhausted", status=503) for _ in range(5)]
    support.store_dead_letters(limited_vhost, seeds)
    expected = sorted(str(seed.event_id) for seed in seeds)
    with support.this_tests_store() as store:
        key = letter_key(next(store.matching(DeadLetterFilter())))
    reads = 0
    # When the CLI lists them and counts them, again and again
    for _ in range(4):
        listed = support.ccsync(limited_vhost, "dlq", "list", "--json")
        counted = support.ccsync(limited_vhost, "dlq", "stats", "--json")
        reads += 2
        # Then every read sees all five
        assert sorted(line["eventId"] for line in support.json_lines(listed)) == expected, (
            listed.output
        )
        assert sum(group["count"] for group in support.json_lines(counted)) == len(seeds), (
            counted.output
        )
    # And operators open the console's pages, again and again
    with (
        serving(console_settings(limited_vhost)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        assert log_in(client).status_code == 303
        for _ in range(2):
            stats = client.get("/api/stats")
            assert sum(group["count"] for group in stats.json()["groups"]) == len(seeds)
            for path in ("/", "/letters", f"/letters/{key}"):
                page = client.get(path)
                assert page.status_code == 200, (path, page.status_code)
            reads += 4
    assert reads == READS
    # And all five are still there, bytes as they were
    remaining = support.stored()
    assert sorted(str(record.event_id) for record in remaining) == expected
    assert sorted(record.body for record in remaining) == sorted(seed.body for seed in seeds)
    # And no read raised their delivery count: none was ever handed back
    assert [record.headers.get(HEADER_DELIVERY_COUNT) or 0 for record in remaining] == [0] * 5


def test_the_store_keeps_every_property_and_the_order_and_a_limited_read_sees_the_first_ones(
    broker_url: str,
) -> None:
    # Given dead letters carrying basic properties besides their headers
    support.fresh_queues(broker_url)
    with Connection(broker_url) as connection:
        channel = connection.channel()
        channel.confirm_select()
        for i in range(3):
            channel.basic_publish_confirm(
                AmqpMessage(
                    f'{{"eventId": "event-{i}"}}'.encode(),
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=f"message-{i}",
                    correlation_id=f"correlation-{i}",
                    app_id="producer",
                    timestamp=1_700_000_000 + i,
                    application_headers={
                        "n": i,
                        HEADER_DEAD_LETTERED_AT: f"2026-01-01T00:00:0{i}+00:00",
                    },
                ),
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key=DEAD_LETTER_QUEUE,
            )
    support.keep(broker_url)
    # When the CLI lists only the first one, twice, and then all of them
    firsts = [support.ccsync(broker_url, "dlq", "list", "--json", "--limit", "1") for _ in range(2)]
    listed = support.ccsync(broker_url, "dlq", "list", "--json")
    # Then each limited read saw the first, and the full one all three, in order
    assert [support.json_lines(first)[0]["eventId"] for first in firsts] == ["event-0", "event-0"]
    assert [line["eventId"] for line in support.json_lines(listed)] == [
        "event-0",
        "event-1",
        "event-2",
    ]
    # And the dead letters kept every property in the store
    kept = [record.properties for record in support.stored()]
    assert [
        (p["message_id"], p["correlation_id"], p["app_id"], p["timestamp"], record.headers["n"])
        for p, record in zip(kept, support.stored(), strict=True)
    ] == [
        (
            f"message-{i}",
            f"correlation-{i}",
            "producer",
            1_700_000_000 + i,
            i,
        )
        for i in range(3)
    ]


def test_the_twin_an_interrupted_put_back_leaves_is_read_once_and_dropped(
    broker_url: str,
) -> None:
    # Given three dead letters
    support.fresh_queues(broker_url)
    seeds = [support.seed_for_event("api-rejected", status=404) for _ in range(3)]
    support.put_dead_letters(broker_url, seeds)
    # And a reader killed between putting the first back and acking its original: a copy
    # confirmed, the original returned by the broker
    with Connection(broker_url) as connection:
        channel = connection.channel()
        channel.auto_decode = False
        original = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=False)
        copy = AmqpMessage(original.body, **original.properties)
        publisher = connection.channel()
        publisher.confirm_select()
        publisher.basic_publish_confirm(
            copy, exchange=DEAD_LETTER_EXCHANGE, routing_key=DEAD_LETTER_QUEUE
        )
        channel.close()
    # When the dead letters are read
    found = support.dead_letters(broker_url)
    # Then each is seen once, and the twin is gone for good
    assert sorted(str(record.event_id) for record in found) == sorted(
        str(seed.event_id) for seed in seeds
    )
    assert support.depth(broker_url, DEAD_LETTER_QUEUE) == 3
