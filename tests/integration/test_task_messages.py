"""Issue 15, item 4: a message in ccsync.tasks this version cannot run is dead-lettered, not lost.

Another version's deploy may leave task messages behind: of a task this version does not have,
with arguments it does not take, or a body it cannot decode. Celery would reject them without
requeue, and ccsync.tasks has no dead-lettering of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import amqp
import pytest

from tests.integration.events import native
from tests.integration.producer import Letter, connect, queue_depth
from tests.integration.waiting import wait_until
from worker.constants import APPLY_EVENT_TASK, DEAD_LETTER_QUEUE, TASKS_EXCHANGE, TASKS_QUEUE
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

KIND = "x-test-kind"


def _task_headers(task: str) -> dict[str, Any]:
    """The headers of a Celery task message (protocol 2), as any version of ccsync sends them."""
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0}


def _task_body(*, args: list[Any] | None = None, kwargs: dict[str, Any]) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([args or [], kwargs, embed]).encode()


def _good_kwargs() -> dict[str, Any]:
    event = native(tenant="tests.cloudcockpit.local")
    return {
        "event": event,
        "envelope": {
            "body": json.dumps(event),
            "contentType": "application/json",
            "contentEncoding": None,
            "headers": {},
        },
        "attempt": 2,
        "first_attempt_at": "2024-01-01T00:00:00+00:00",
    }


def _unrunnable_messages() -> dict[str, tuple[bytes, str, dict[str, Any]]]:
    """Kind -> (body, content type, headers) of task messages this version cannot run."""
    renamed = _good_kwargs()
    renamed["payload"] = renamed.pop("event")
    invalid_event = _good_kwargs()
    invalid_event["event"]["customerId"] = "not-a-uuid"
    good = _good_kwargs()
    return {
        "unknown task": (
            _task_body(kwargs=good),
            "application/json",
            _task_headers("ccsync.apply_event_v0"),
        ),
        "an argument renamed": (
            _task_body(kwargs=renamed),
            "application/json",
            _task_headers(APPLY_EVENT_TASK),
        ),
        "an extra positional argument": (
            _task_body(args=[1], kwargs=good),
            "application/json",
            _task_headers(APPLY_EVENT_TASK),
        ),
        "an event that is not valid": (
            _task_body(kwargs=invalid_event),
            "application/json",
            _task_headers(APPLY_EVENT_TASK),
        ),
        "a body that is not JSON": (
            b"\x80\x04not json",
            "application/json",
            _task_headers(APPLY_EVENT_TASK),
        ),
        "a content type Celery does not accept": (
            b"\x80\x04pickle",
            "application/x-python-serialize",
            _task_headers(APPLY_EVENT_TASK),
        ),
        "no task header": (b"[1, 2, 3]", "application/json", {}),
    }


def _publish_into_tasks(
    broker_url: str, body: bytes, content_type: str, headers: dict[str, Any]
) -> None:
    connection = connect(broker_url)
    try:
        message = amqp.Message(
            body,
            content_type=content_type,
            content_encoding="utf-8",
            application_headers=headers,
            delivery_mode=2,
        )
        connection.channel().basic_publish(
            message, exchange=TASKS_EXCHANGE, routing_key=TASKS_QUEUE
        )
    finally:
        connection.close()


def _read_letters(broker_url: str, expected: int, timeout: float = 30.0) -> list[Letter]:
    """Like ``read_dead_letters``, for bodies labelled utf-8 (as Celery labels task messages)."""
    letters: list[Letter] = []
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        channel.auto_decode = False
        deadline = time.monotonic() + timeout
        while len(letters) < expected and time.monotonic() < deadline:
            message = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=True)
            if message is None:
                time.sleep(0.1)
                continue
            headers = dict(message.properties.get("application_headers") or {})
            letters.append(
                Letter(bytes(message.body), message.properties.get("content_type"), headers)
            )
    finally:
        connection.close()
    return letters


def test_given_task_messages_this_version_cannot_run_then_each_is_dead_lettered_with_why(
    worker: LocalWorker, sandbox: SandboxControl, broker_url: str
) -> None:
    # Given task messages another version left in ccsync.tasks, each marked to be recognised
    messages = _unrunnable_messages()

    # When they are published into ccsync.tasks
    for kind, (body, content_type, headers) in messages.items():
        _publish_into_tasks(broker_url, body, content_type, {**headers, KIND: kind})

    # Then each ends in the dead-letter queue as invalid-event, saying what was wrong
    letters = _read_letters(broker_url, expected=len(messages))
    by_kind = {letter.headers.get(KIND): letter for letter in letters}
    assert set(by_kind) == set(messages)
    for kind, letter in by_kind.items():
        assert letter.headers["x-ccsync-reason"] == "invalid-event", kind
        assert letter.headers["x-ccsync-error"], kind
    assert (
        "unknown task 'ccsync.apply_event_v0'" in by_kind["unknown task"].headers["x-ccsync-error"]
    )
    assert "payload" in by_kind["an argument renamed"].headers["x-ccsync-error"]
    assert "customerId" in by_kind["an event that is not valid"].headers["x-ccsync-error"]
    # And each keeps the task message's bytes as they were
    for kind, letter in by_kind.items():
        assert letter.body == messages[kind][0], kind

    # And none is left in ccsync.tasks, requeued or unacknowledged, and nothing was sent
    wait_until(
        lambda: queue_depth(broker_url, TASKS_QUEUE) == 0, timeout=10, what="ccsync.tasks empty"
    )
    assert [entry for entry in sandbox.journal() if entry["method"] == "PATCH"] == []
    assert worker.alive


def test_given_a_retry_message_this_version_can_run_then_it_is_applied(
    worker: LocalWorker, sandbox: SandboxControl, broker_url: str
) -> None:
    # Given a retry as this version writes it
    kwargs = _good_kwargs()

    # When it is published into ccsync.tasks
    _publish_into_tasks(
        broker_url, _task_body(kwargs=kwargs), "application/json", _task_headers(APPLY_EVENT_TASK)
    )

    # Then it is applied
    customer = kwargs["event"]["customerId"]
    wait_until(
        lambda: any(c["id"] == customer for c in sandbox.state()),
        timeout=30,
        what="the retry applied",
    )
