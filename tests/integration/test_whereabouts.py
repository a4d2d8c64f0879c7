"""Issue 29, item 4: ``ccsync events show`` says where an event is, from what ccsync keeps.

A real worker applies, skips, holds and dead-letters events at the sandbox; the answers are read
back from the ledger, the dead-letter queue and the queues, as an integration team would ask.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kombu import Connection

from tests.integration.conftest import TENANT, worker_env
from tests.integration.events import later, native
from tests.integration.producer import Producer, queue_depth
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from worker.cli import main
from worker.constants import DEAD_LETTER_QUEUE, REASON_API_REJECTED
from worker.ops.whereabouts import Report, Whereabouts, where_is
from worker.processing.ledger import Ledger
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = [pytest.mark.usefixtures("clean_queues"), pytest.mark.timeout(120)]

#: Long enough that a held event is still held, and its retry still queued, while it is asked
#: about.
HOLD_SECONDS = 90


@pytest.fixture(scope="module")
def held_worker(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer
) -> Iterator[LocalWorker]:
    env = worker_env(
        broker_url,
        sandbox_server.url,
        redis_url,
        CCSYNC_UNANSWERED_HOLD_SECONDS=str(HOLD_SECONDS),
        CCSYNC_RETRY_DELAYS=str(HOLD_SECONDS),
        CCSYNC_RETRY_JITTER="0",
    )
    with LocalWorker(env, concurrency=4) as process:
        yield process


@pytest.fixture
def ask(broker_url: str, redis_url: str) -> Iterator[Any]:
    """``where_is`` on the test's broker and Redis."""
    ledger = Ledger.from_url(redis_url)
    with Connection(broker_url) as connection:

        def where(**question: Any) -> Report:
            return where_is(ledger=ledger, connection=connection, **question)

        yield where


def events_show(broker_url: str, redis_url: str, *args: str) -> Result:
    """``ccsync events show ARGS`` in this process, as an integration team would type it."""
    env = {"CCSYNC_BROKER_URL": broker_url, "CCSYNC_REDIS_URL": redis_url}
    return CliRunner().invoke(main, ["events", "show", *args], env=env, catch_exceptions=False)


def published_until(
    worker: LocalWorker, producer: Producer, event: dict[str, Any], outcome: str
) -> None:
    producer.publish(json.dumps(event).encode(), "application/json")
    wait_until(
        lambda: (event["eventId"], outcome) in final_outcomes(worker),
        timeout=30,
        what=f"event {event['eventId']} {outcome}",
    )


def test_given_an_applied_event_then_it_says_when_and_with_which_value(
    held_worker: LocalWorker,
    sandbox: SandboxControl,
    producer: Producer,
    ask: Any,
    broker_url: str,
    redis_url: str,
) -> None:
    # Given an event the worker applied
    event = native(identifier="ERP-APPLIED")
    published_until(held_worker, producer, event, "applied")

    # When asked about by its id alone
    report = ask(event_id=event["eventId"])

    # Then it is applied, with its value, its occurredAt and when it was applied
    assert report.status is Whereabouts.APPLIED
    assert report.customer_id == event["customerId"]
    [state] = report.relationships
    assert state.relationship.tenant == TENANT
    assert state.applied is not None
    assert state.applied.event_id == event["eventId"]
    assert state.applied.value == "ERP-APPLIED"
    assert state.applied.occurred_at == datetime.fromisoformat(event["occurredAt"])
    assert '"ERP-APPLIED"' in report.detail
    # And the command line says so, naming the relationship and its newest event
    lines = events_show(broker_url, redis_url, event["eventId"]).output.splitlines()
    assert lines[0] == f"event {event['eventId']}: applied"
    assert f"relationship {TENANT} {event['customerId']} self" in lines
    assert any(
        line.startswith(f"  newest applied: {event['eventId']} ") and '"ERP-APPLIED"' in line
        for line in lines
    )


def test_given_an_event_older_than_the_one_applied_then_it_is_stale_naming_the_newer(
    held_worker: LocalWorker,
    sandbox: SandboxControl,
    producer: Producer,
    ask: Any,
    broker_url: str,
    redis_url: str,
) -> None:
    # Given a newer event applied, then an older one of the same customer skipped
    newer = native(identifier="NEWER")
    older = native(newer["customerId"], "OLDER", occurred_at=later(newer, -60))
    published_until(held_worker, producer, newer, "applied")
    published_until(held_worker, producer, older, "is stale")

    # When asked about the older one, with its customer and occurredAt
    report = ask(
        event_id=older["eventId"],
        customer_id=uuid.UUID(older["customerId"]),
        occurred_at=datetime.fromisoformat(older["occurredAt"]),
    )

    # Then it is stale, and the answer names the newer event and its value
    assert report.status is Whereabouts.STALE
    assert newer["eventId"] in report.detail and '"NEWER"' in report.detail
    # And without its occurredAt, ccsync does not guess, but shows the newest applied
    unsure = ask(event_id=older["eventId"], customer_id=uuid.UUID(older["customerId"]))
    assert unsure.status is Whereabouts.UNKNOWN
    assert newer["eventId"] in unsure.detail and "--occurred-at" in unsure.detail
    # And the command line says the same
    result = events_show(
        broker_url,
        redis_url,
        older["eventId"],
        "--customer",
        older["customerId"],
        "--occurred-at",
        older["occurredAt"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"event {older['eventId']}: stale\n")


def test_given_an_event_whose_call_got_no_answer_then_it_is_waiting_and_the_newer_behind_it(
    held_worker: LocalWorker,
    sandbox: SandboxControl,
    producer: Producer,
    ask: Any,
    broker_url: str,
    redis_url: str,
) -> None:
    # Given an event whose call a gateway answered 503: its retry is queued, its relationship held
    event = native(identifier="HELD")
    sandbox.add_faults(event["customerId"], {"status": 503})
    producer.publish(json.dumps(event).encode(), "application/json")
    wait_until(
        lambda: f"event {event['eventId']} failed:" in held_worker.log,
        timeout=30,
        what="the event's call to fail",
    )

    # When asked about by its id alone
    report = ask(event_id=event["eventId"])

    # Then it is waiting: its relationship lingers for it, for about the hold
    assert report.status is Whereabouts.WAITING, report.detail
    [state] = report.relationships
    assert state.applied is None
    assert state.lock is not None and state.lock.lingering_for == event["eventId"]
    assert HOLD_SECONDS - 30 < state.lock.remaining_seconds <= HOLD_SECONDS
    assert report.queued.delayed >= 1
    # And so does the command line's JSON, asked by the customer
    result = events_show(broker_url, redis_url, "--customer", event["customerId"], "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["status"] is None
    [relationship] = answer["relationships"]
    assert relationship["lock"]["lingeringFor"] == event["eventId"]
    assert answer["queued"]["delayed"] >= 1


def test_given_a_dead_lettered_event_then_it_says_why_and_leaves_the_dead_letter_in_place(
    held_worker: LocalWorker,
    sandbox: SandboxControl,
    producer: Producer,
    ask: Any,
    broker_url: str,
    redis_url: str,
) -> None:
    # Given an event CloudCockpit refused, dead-lettered
    event = native(identifier="REFUSED")
    sandbox.add_faults(event["customerId"], {"status": 400})
    published_until(held_worker, producer, event, "dead-lettered")

    # When asked about by its id, on the command line, in JSON
    result = events_show(broker_url, redis_url, event["eventId"], "--json")

    # Then it is dead-lettered, with the reason and the status; and the dead letter stays
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["status"] == Whereabouts.DEAD_LETTERED
    assert answer["customerId"] == event["customerId"]
    [letter] = answer["deadLetters"]
    assert letter["eventId"] == event["eventId"]
    assert letter["reason"] == REASON_API_REJECTED and letter["status"] == 400
    assert REASON_API_REJECTED in answer["detail"] and "status 400" in answer["detail"]
    assert queue_depth(broker_url, DEAD_LETTER_QUEUE) == 1
    # And by its customer, the dead letter is listed too
    by_customer = ask(customer_id=uuid.UUID(event["customerId"]))
    assert [letter.event_id for letter in by_customer.dead_letters] == [event["eventId"]]


def test_given_an_event_ccsync_never_saw_then_it_is_unknown(ask: Any) -> None:
    report = ask(event_id=f"never-{uuid.uuid4()}")

    assert report.status is Whereabouts.UNKNOWN
    assert report.relationships == [] and report.dead_letters == []
