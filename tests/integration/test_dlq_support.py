"""Helpers of the ``ccsync dlq`` integration tests, and a check of the helpers themselves.

Dead letters are put in place the way an operator's import would: with chosen dead-lettering
times, so that time filters and stats can be tested against a real broker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from click.testing import CliRunner, Result
from kombu import Connection

from tests.integration.producer import queue_depth
from worker.amqp.event_publishing import Encoding, encode, new_event
from worker.amqp.topology import declare_topology
from worker.cli import main
from worker.constants import BACKFILL_QUEUE, DEAD_LETTER_QUEUE, EVENTS_QUEUE, TASKS_QUEUE
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.keeper import Keeper
from worker.dead_letter_queue.reading import DeadLetterRecord, hold
from worker.dead_letter_queue.store import WAITING, DeadLetterStore
from worker.dead_letter_queue.transfer import import_dead_letters
from worker.events import correlation_id
from worker.processing.dead_letters import DeadLetter, json_safe_headers
from worker.settings import Settings

TENANT = "tests.example"


def fresh_queues(broker_url: str) -> None:
    """Topology declared, and the queues these tests count emptied."""
    with Connection(broker_url) as connection:
        declare_topology(connection)
        channel = connection.channel()
        for queue in (DEAD_LETTER_QUEUE, EVENTS_QUEUE, BACKFILL_QUEUE, TASKS_QUEUE):
            channel.queue_purge(queue)
        channel.close()


@dataclass(frozen=True)
class Seed:
    """One dead letter to put in place: the producer's message and its fate."""

    body: bytes
    content_type: str | None
    headers: dict[str, Any]
    letter: DeadLetter
    at: datetime

    @property
    def event_id(self) -> str | None:
        return self.letter.event_id

    def record(self) -> DeadLetterRecord:
        headers = {**self.headers, **self.letter.headers(now=self.at)}
        return DeadLetterRecord(
            0, self.body, self.content_type, json_safe_headers(headers), raw_headers=headers
        )


def seed_for_event(
    reason: str,
    *,
    status: int | None = None,
    error: str = "HTTP 503; ServiceUnavailable; down",
    at: datetime | None = None,
    customer: str | None = None,
    tenant: str | None = TENANT,
    encoding: Encoding = Encoding.NATIVE,
    identifier: str = "ID-1",
) -> Seed:
    event = new_event(customer or str(uuid.uuid4()), identifier, tenant=tenant)
    body, content_type, headers = encode(event, encoding)
    event_id = event["eventId"]
    letter = DeadLetter(
        reason=reason,
        error=error,
        attempts=3 if reason == "retries-exhausted" else 1,
        event_id=event_id,
        correlation_id=str(correlation_id(tenant or TENANT, event_id)),
        status=status,
    )
    return Seed(body, content_type, headers, letter, at or datetime.now(UTC))


def put_dead_letters(broker_url: str, seeds: Sequence[Seed]) -> None:
    with Connection(broker_url) as connection:
        report = import_dead_letters(
            connection, [seed.record() for seed in seeds], DeadLetterFilter()
        )
    assert report.written == len(seeds)


def this_tests_store() -> DeadLetterStore:
    """The store the commands of this test use: ``CCSYNC_DLQ_STORE_URL``'s default, a file in
    the test's own directory (the module uses ``clean_environment``)."""
    return DeadLetterStore(Settings().dlq_store_url)


def keep(broker_url: str) -> None:
    """The keeper's work: every dead letter of the queue moved into this test's store."""
    with Connection(broker_url) as connection, this_tests_store() as store:
        Keeper(connection, store, retention=timedelta(days=14)).run(lambda: False, until_empty=True)


def store_dead_letters(broker_url: str, seeds: Sequence[Seed]) -> None:
    """The seeds as dead letters in the store, the way they get there: queue, then keeper (this
    one, or a console's that runs meanwhile)."""
    before = waiting()
    put_dead_letters(broker_url, seeds)
    keep(broker_url)
    wait_for(lambda: waiting() >= before + len(seeds), what=f"{len(seeds)} dead letters stored")


def stored(*, states: Sequence[str] = (WAITING,)) -> list[DeadLetterRecord]:
    """The dead letters of this test's store in those states, the oldest first."""
    with this_tests_store() as store:
        return [letter.record for letter in store.matching(DeadLetterFilter(), states=states)]


def waiting() -> int:
    with this_tests_store() as store:
        return store.count()


def dead_letters(broker_url: str) -> list[DeadLetterRecord]:
    """Every dead letter, left in the queue."""
    with Connection(broker_url) as connection, hold(connection) as held:
        return list(held.records)


def depth(broker_url: str, queue: str) -> int:
    """Ready messages in ``queue`` (``producer.queue_depth``; the dead-letter queue exactly)."""
    return queue_depth(broker_url, queue)


def replayed_depth(broker_url: str) -> int:
    """Messages waiting in the two lanes a replay publishes to (``replay.lane_of``)."""
    return depth(broker_url, EVENTS_QUEUE) + depth(broker_url, BACKFILL_QUEUE)


@dataclass(frozen=True)
class Taken:
    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]

    @property
    def event_id(self) -> str:
        document = json.loads(self.body)
        return str(document.get("eventId") or document.get("id") or self.headers["cloudEvents:id"])


def take_all(broker_url: str, queue: str) -> list[Taken]:
    """Takes every message out of ``queue`` (for queues no worker reads in the test)."""
    taken: list[Taken] = []
    with Connection(broker_url) as connection:
        channel = connection.channel()
        channel.auto_decode = False
        while (message := channel.basic_get(queue=queue, no_ack=True)) is not None:
            properties = message.properties
            taken.append(
                Taken(
                    bytes(message.body),
                    properties.get("content_type"),
                    properties.get("content_encoding"),
                    dict(properties.get("application_headers") or {}),
                )
            )
        channel.close()
    return taken


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def ccsync(broker_url: str, *args: str, input: str | None = None) -> Result:
    """``ccsync ARGS`` in this process, as an operator would type it."""
    return CliRunner().invoke(
        main, list(args), input=input, env={"CCSYNC_BROKER_URL": broker_url}, catch_exceptions=False
    )


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_seeded_dead_letters_are_in_the_queue_as_seeded(broker_url: str) -> None:
    # Given an empty dead-letter queue
    fresh_queues(broker_url)
    seeds = [seed_for_event("api-rejected", status=404) for _ in range(3)]
    # When the helpers put dead letters in place
    put_dead_letters(broker_url, seeds)
    # Then they are there, in order, bytes and headers as seeded
    found = dead_letters(broker_url)
    assert [record.event_id for record in found] == [seed.event_id for seed in seeds]
    assert [record.body for record in found] == [seed.body for seed in seeds]
    assert found[0].headers["x-ccsync-dead-lettered-at"] == seeds[0].at.isoformat()
    # And reading them took none out
    assert depth(broker_url, DEAD_LETTER_QUEUE) == 3


def take_replayed(broker_url: str) -> list[Taken]:
    """Everything a replay published, in its order: the live lane's first ten, then the rest
    from the backfill lane (``replay.lane_of``)."""
    return take_all(broker_url, EVENTS_QUEUE) + take_all(broker_url, BACKFILL_QUEUE)
