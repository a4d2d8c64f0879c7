"""An HTTP request's events as the AMQP messages a producer would publish, each validated by the
intake's own decoder (``worker.events.parse_event``), so what is accepted here is what the worker
accepts.

Accepted (CloudEvents HTTP binding 1.0 and contract section 3):

- ``application/json``: one native event, republished as is;
- ``application/cloudevents+json``: one CloudEvent in structured mode, republished as is;
- ``ce-*`` headers (binary mode): the attributes, the body being ``data``; republished with the
  same body and the attributes as ``cloudEvents:*`` AMQP application headers;
- ``application/cloudevents-batch+json``: a JSON array of structured CloudEvents, each
  republished as one structured message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from pydantic import ValidationError

from worker.constants import CLOUDEVENTS_CONTENT_TYPE
from worker.events import parse_event
from worker.exceptions import CcsyncError, InvalidEvent

NATIVE_CONTENT_TYPE: Final = "application/json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
#: Prefix of the CloudEvents attributes among HTTP headers (binary mode).
HTTP_ATTRIBUTE_PREFIX: Final = "ce-"
#: Prefix of the same attributes among AMQP application headers (what the intake reads).
AMQP_ATTRIBUTE_PREFIX: Final = "cloudEvents:"
#: Problems a 400 lists (the first ones; all are counted): a batch of invalid events answers in a
#: few kilobytes, never in more than its own size.
MAX_REPORTED_PROBLEMS: Final = 100


class UnsupportedMediaType(CcsyncError):
    """Answer 415: the request is none of the accepted forms; the message lists them."""


class BatchTooLarge(CcsyncError):
    """Answer 413: a batch holds more events than ``CCSYNC_MAX_BATCH_EVENTS``; the message says
    how many are accepted, so that the producer splits it."""


@dataclass(frozen=True)
class FieldProblem:
    """One reason an event is invalid: ``event`` is its index in a batch (None outside a batch),
    ``field`` where the problem is (a JSON path, ``ce-<attribute>`` or ``body``)."""

    event: int | None
    field: str
    detail: str


class InvalidRequest(CcsyncError):
    """Answer 400: ``problems`` names the first ``MAX_REPORTED_PROBLEMS`` invalid fields of the
    request's events, in order; ``count`` is the number of all."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = list(problems[:MAX_REPORTED_PROBLEMS])
        self.count = len(problems)
        super().__init__("; ".join(f"{p.field}: {p.detail}" for p in self.problems))


@dataclass(frozen=True)
class Outgoing:
    """One AMQP message to publish, and the eventId the intake will read from it."""

    body: bytes
    content_type: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""


def decode_request(
    body: bytes, headers: Mapping[str, str], *, max_event_bytes: int, max_batch_events: int
) -> list[Outgoing]:
    """The messages of one request, every one of them valid.

    ``headers`` must be case-insensitive (``ce-*`` names are matched in lower case). Raises
    ``UnsupportedMediaType``, ``BatchTooLarge`` for a batch of over ``max_batch_events`` events
    (before any is validated), or ``InvalidRequest`` naming the problems of the events: a request
    is published whole or not at all. CPU-bound on a large body: call it off the event loop.
    """
    content_type = headers.get("content-type")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    attributes = {
        name.lower().removeprefix(HTTP_ATTRIBUTE_PREFIX): unquote(value)
        for name, value in headers.items()
        if name.lower().startswith(HTTP_ATTRIBUTE_PREFIX)
    }
    if media_type == CLOUDEVENTS_CONTENT_TYPE:
        candidates = [Outgoing(body, content_type)]
    elif media_type == BATCH_CONTENT_TYPE:
        candidates = _batch(body, max_batch_events)
    elif attributes and media_type in ("", NATIVE_CONTENT_TYPE):
        amqp_headers = {f"{AMQP_ATTRIBUTE_PREFIX}{key}": value for key, value in attributes.items()}
        candidates = [Outgoing(body, content_type or NATIVE_CONTENT_TYPE, amqp_headers)]
    elif media_type == NATIVE_CONTENT_TYPE:
        candidates = [Outgoing(body, content_type)]
    else:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not accepted: send {NATIVE_CONTENT_TYPE} (an "
            f"event, or CloudEvents binary mode with ce-* headers), {CLOUDEVENTS_CONTENT_TYPE} "
            f"or {BATCH_CONTENT_TYPE}"
            if content_type
            else f"no Content-Type: send {NATIVE_CONTENT_TYPE}, {CLOUDEVENTS_CONTENT_TYPE} or "
            f"{BATCH_CONTENT_TYPE}"
        )
    batch = media_type == BATCH_CONTENT_TYPE
    binary = bool(candidates and candidates[0].headers)
    problems: list[FieldProblem] = []
    accepted: list[Outgoing] = []
    for index, candidate in enumerate(candidates):
        where = index if batch else None
        if len(candidate.body) > max_event_bytes:
            problems.append(
                FieldProblem(where, "body", f"the event is over {max_event_bytes} bytes")
            )
            continue
        try:
            event = parse_event(candidate.body, candidate.content_type, candidate.headers)
        except InvalidEvent as exc:
            problems.append(FieldProblem(where, "body", str(exc)))
        except ValidationError as exc:
            problems.extend(_field_problems(exc, where, binary=binary))
        else:
            accepted.append(
                Outgoing(candidate.body, candidate.content_type, candidate.headers, event.event_id)
            )
    if problems:
        raise InvalidRequest(problems)
    return accepted


def _batch(body: bytes, max_events: int) -> list[Outgoing]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise InvalidRequest([FieldProblem(None, "body", f"not a JSON array: {reason}")]) from None
    if not isinstance(document, list):
        raise InvalidRequest(
            [FieldProblem(None, "body", "a batch must be a JSON array of CloudEvents")]
        )
    if len(document) > max_events:
        raise BatchTooLarge(
            f"the batch holds {len(document)} events; at most {max_events} are accepted in one "
            "request: send the rest in further requests"
        )
    problems: list[FieldProblem] = []
    messages: list[Outgoing] = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            problems.append(
                FieldProblem(
                    index, "body", "each item of a batch must be a JSON object (a CloudEvent)"
                )
            )
            continue
        try:
            text = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            detail = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not Unicode"
            problems.append(FieldProblem(index, "body", detail))
            continue
        messages.append(Outgoing(text, CLOUDEVENTS_CONTENT_TYPE))
    if problems:
        raise InvalidRequest(problems)
    return messages


def _field_problems(exc: ValidationError, event: int | None, *, binary: bool) -> list[FieldProblem]:
    """Each failing field, named where the producer wrote it; pydantic's reason, never the input.

    In binary mode the attributes came from ``ce-*`` headers and the body is ``data``.
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = [str(part) for part in error["loc"]]
        if binary and location and location[0] == "data":
            name = ".".join(location[1:]) or "body"
        elif binary and location:
            name = f"{HTTP_ATTRIBUTE_PREFIX}{location[0]}"
        else:
            name = ".".join(location) or "body"
        problems.append(FieldProblem(event, name, error["msg"]))
    return problems
