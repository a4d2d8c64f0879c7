"""Issue 18, item 1: a broker holding the classic ccsync.dead-letter of earlier versions is moved
to the quorum queue by ``ccsync topology --migrate``, every dead letter kept byte for byte; issue
27, item 5: so is the quorum queue without a delivery limit of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from amqp import Message as AmqpMessage
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from tests.conftest import throwaway_vhost
from worker.amqp.topology import declare_topology, previous_dead_letter_queue
from worker.constants import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from worker.dead_letter_queue.reading import hold

LETTERS = 40


@pytest.fixture
def old_vhost() -> Iterator[str]:
    """A vhost of its own holding the topology of earlier versions: a classic dead-letter queue."""
    with throwaway_vhost("ccsync-migrate-") as url:
        yield url


def _topology(url: str, *, migrate: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CCSYNC_BROKER_URL": url, "CCSYNC_BROKER_CONNECT_TIMEOUT": "10"}
    argv = [sys.executable, "-m", "worker", "topology", "--migrate" if migrate else "--apply"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _migrate_every_dead_letter(url: str) -> None:
    migrated = _topology(url, migrate=True)
    assert migrated.returncode == 0, migrated.stderr
    assert f"moved {LETTERS} dead letters into the quorum" in migrated.stdout


def test_given_a_classic_dead_letter_queue_when_migrated_then_every_dead_letter_is_kept(
    old_vhost: str,
) -> None:
    # Given the classic queue of earlier versions holding dead letters
    with Connection(old_vhost) as connection:
        channel = connection.channel()
        channel.exchange_declare(DEAD_LETTER_EXCHANGE, "direct", durable=True, auto_delete=False)
        channel.queue_declare(
            DEAD_LETTER_QUEUE,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "classic"},
        )
        channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE)
        for i in range(LETTERS):
            channel.basic_publish_confirm(
                AmqpMessage(
                    f'{{"eventId": "old-{i}"}}'.encode(),
                    content_type="application/json",
                    delivery_mode=2,
                    application_headers={"x-ccsync-reason": "api-rejected", "n": i},
                ),
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key=DEAD_LETTER_QUEUE,
            )
    # When this version declares its topology, it refuses, naming the way out
    refused = _topology(old_vhost, migrate=False)
    assert refused.returncode != 0
    assert "topology differs" in refused.stderr
    assert "ccsync topology --migrate" in refused.stderr
    # When the operator migrates, every dead letter is moved
    _migrate_every_dead_letter(old_vhost)
    # Then the queue is the quorum queue this version declares, every dead letter in it, in order
    with Connection(old_vhost) as connection:
        declare_topology(connection)
        with hold(connection) as held:
            records = list(held.records)
            assert [record.body for record in records] == [
                f'{{"eventId": "old-{i}"}}'.encode() for i in range(LETTERS)
            ]
            assert [record.headers["n"] for record in records] == list(range(LETTERS))
            assert all(record.content_type == "application/json" for record in records)
            # the move left the count of the migrating queue behind: this is a first delivery
            assert {record.headers.get("x-delivery-count") for record in records} == {0}
    # And running it again changes nothing
    again = _topology(old_vhost, migrate=True)
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout


def test_given_the_quorum_queue_without_a_delivery_limit_then_tools_warn_and_migrate_moves_it(
    old_vhost: str,
) -> None:
    # Given the quorum queue of the previous version (no delivery limit of its own) with dead
    # letters, which the broker's default limit applies to on RabbitMQ 4
    with Connection(old_vhost) as connection:
        channel = connection.channel()
        previous_dead_letter_queue(channel).declare()
        channel.confirm_select()
        for i in range(LETTERS):
            channel.basic_publish_confirm(
                AmqpMessage(f'{{"eventId": "old-{i}"}}'.encode(), delivery_mode=2),
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key=DEAD_LETTER_QUEUE,
            )
    # When this version declares its topology, it goes on, warning loudly with the way out
    applied = _topology(old_vhost, migrate=False)
    assert (applied.returncode, "ccsync topology --migrate" in applied.stderr) == (0, True)
    assert "has no delivery limit of its own" in applied.stderr
    # When the operator migrates, every dead letter is moved
    _migrate_every_dead_letter(old_vhost)
    # Then the queue is the one this version declares (a declaration with other arguments is
    # refused), every dead letter in it, in order
    with Connection(old_vhost) as connection:
        channel = connection.channel()
        with pytest.raises(PreconditionFailed):
            previous_dead_letter_queue(channel).declare()
        with hold(connection) as held:
            assert [record.body for record in held.records] == [
                f'{{"eventId": "old-{i}"}}'.encode() for i in range(LETTERS)
            ]
    # And nothing warns any more
    again = _topology(old_vhost, migrate=True)
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout
    assert "delivery limit" not in again.stderr
