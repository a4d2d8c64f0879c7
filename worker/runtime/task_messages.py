"""Messages in ``ccsync.tasks`` this version cannot run: dead letters, never dropped.

Another version's deploy may leave task messages behind: of a task this version does not have,
with arguments its ``apply_event`` does not take, or a body it cannot decode. Celery rejects such
a message without requeue, and ``ccsync.tasks`` has no dead-lettering of its own, so it would be
gone. ccsync's consumer (``app.CcsyncConsumer``) hands them here instead: each becomes a dead
letter ``invalid-event`` saying what was wrong, its bytes kept, confirmed before the ack.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.message import Message
from pydantic import ValidationError

from worker.amqp.topology import publish_declaring_topology
from worker.constants import APPLY_EVENT_TASK, REASON_INVALID_EVENT
from worker.events import describe_validation_error
from worker.observability import metrics
from worker.processing.attempts import Attempt
from worker.processing.dead_letters import DeadLetter, Envelope, publish_dead_letter

log = logging.getLogger(__name__)

#: The keyword arguments ``apply_event`` requires (``Attempt.to_task_kwargs``).
APPLY_EVENT_ARGUMENTS = frozenset({"event", "envelope", "attempt", "first_attempt_at"})
#: The keyword arguments ``apply_event`` takes when they are given.
OPTIONAL_APPLY_EVENT_ARGUMENTS = frozenset({"inherited_lock"})


def why_apply_event_cannot_run(message: Message) -> str | None:
    """What makes an ``apply_event`` message unrunnable by this version, or None if it can run.

    Decodes the body as the pool would (the app's accepted content types only) and reads the
    attempt it carries, so that a message that would fail on every delivery fails here once.
    """
    try:
        payload = message.decode()
    except Exception as exc:
        return f"task message does not decode: {type(exc).__name__}: {exc}"
    if not (isinstance(payload, list | tuple) and len(payload) == 3):
        return "task message is not [args, kwargs, embed]"
    args, kwargs, _ = payload
    if args:
        return f"arguments {APPLY_EVENT_TASK!r} does not accept: {len(args)} positional"
    if not isinstance(kwargs, dict):
        return f"arguments {APPLY_EVENT_TASK!r} does not accept: kwargs is not an object"
    unexpected = sorted(set(kwargs) - APPLY_EVENT_ARGUMENTS - OPTIONAL_APPLY_EVENT_ARGUMENTS)
    missing = sorted(APPLY_EVENT_ARGUMENTS - set(kwargs))
    if unexpected or missing:
        return (
            f"arguments {APPLY_EVENT_TASK!r} does not accept: unexpected {unexpected}, "
            f"missing {missing}"
        )
    try:
        Attempt.from_task_kwargs(**kwargs)
    except ValidationError as exc:
        return f"task arguments are not a valid attempt: {describe_validation_error(exc)}"
    except Exception as exc:
        return f"task arguments are not a valid attempt: {type(exc).__name__}: {exc}"
    return None


def dead_letter_task_message(app: Celery, message: Message, error: str) -> None:
    """In the consumer's event loop: dead-letter ``message`` as ``invalid-event`` (confirmed,
    taken by a queue), then ack it. If that fails, the message is requeued, never dropped."""
    log.error("task message dead-lettered: %s", error)
    try:
        envelope = _envelope(message)
        letter = DeadLetter(REASON_INVALID_EVENT, error, attempts=0, event_id=_event_id(message))
        with app.producer_or_acquire() as producer:
            publish_declaring_topology(
                producer.connection,
                lambda: publish_dead_letter(producer.channel, envelope=envelope, letter=letter),
            )
        metrics.EVENTS_DEAD_LETTERED.labels(REASON_INVALID_EVENT).inc()
        message.ack()
    except Exception:
        log.exception("could not dead-letter a task message; it is requeued")
        message.reject(requeue=True)


def _envelope(message: Message) -> Envelope:
    body = message.body or b""
    return Envelope(
        body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
        content_type=message.content_type or None,
        content_encoding=message.content_encoding or None,
        headers=dict(message.headers or {}),
    )


def _event_id(message: Message) -> str | None:
    try:
        event = message.decode()[1]["event"]["eventId"]
    except Exception:
        return None
    return event if isinstance(event, str) and 0 < len(event) <= 200 else None


def unknown_task_error(message: Message) -> str:
    headers: Any = message.headers
    name = headers.get("task") if isinstance(headers, dict) else None
    return f"unknown task {name!r}: this version runs only {APPLY_EVENT_TASK!r}"
