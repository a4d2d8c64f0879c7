"""The event contract (contract section 3): pydantic models and the decoding of AMQP messages.

Three encodings arrive on one queue: native JSON, CloudEvents structured mode (content type
``application/cloudevents+json``) and CloudEvents binary mode (the attributes as application
headers, under any of ``CLOUDEVENTS_HEADER_PREFIXES``, the body being ``data``). All become one
``IdentifierChanged``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from worker.constants import CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_HEADER_PREFIXES, EVENT_TYPE
from worker.exceptions import InvalidEvent

#: Fixed forever: another would change every X-Correlation-Id, and CloudCockpit's audit trail.
CORRELATION_NAMESPACE = uuid.UUID("5b0f4f7e-2a4c-5d69-9d0e-6363737973e1")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339_text(value: object) -> object:
    # pydantic alone would also take epoch numbers, even inside strings; the contract promises
    # producers an RFC 3339 timestamp with an offset, and ordering depends on reading it right.
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
# The X-Tenant header: a portal domain. Visible ASCII only, or it could not be sent as a header.
Tenant = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[!-~]+$")]


class IdentifierChanged(BaseModel):
    """A customer's internal identifier changed at the source (one relationship of it)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        alias="eventId"
    )
    event_type: Literal["customer.internal-identifier.changed"] = Field(alias="eventType")
    occurred_at: Timestamp = Field(alias="occurredAt")
    tenant: Tenant | None = None
    customer_id: uuid.UUID = Field(alias="customerId")
    reseller_id: uuid.UUID | None = Field(None, alias="resellerId")
    internal_identifier: Annotated[str | None, Field(max_length=255)] = Field(
        alias="internalIdentifier"
    )
    source: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON form carried inside ccsync's own task messages."""
        return self.model_dump(mode="json", by_alias=True)


class CloudEventData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenant: Tenant | None = None
    customerId: uuid.UUID
    resellerId: uuid.UUID | None = None
    internalIdentifier: Annotated[str | None, Field(max_length=255)]


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 attributes this system reads; ``time`` is required here."""

    model_config = ConfigDict(extra="ignore")

    specversion: Literal["1.0"]
    type: Literal["customer.internal-identifier.changed"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    source: NonEmpty
    time: Timestamp
    data: CloudEventData

    def to_event(self) -> IdentifierChanged:
        return IdentifierChanged.model_validate(
            {
                "eventId": self.id,
                "eventType": EVENT_TYPE,
                "occurredAt": self.time.isoformat(),
                "tenant": self.data.tenant,
                "customerId": self.data.customerId,
                "resellerId": self.data.resellerId,
                "internalIdentifier": self.data.internalIdentifier,
                "source": self.source,
            }
        )


def reject_if_ahead(event: IdentifierChanged, *, now: datetime, max_skew_seconds: float) -> None:
    """Raise ``InvalidEvent`` when ``occurredAt`` lies more than ``max_skew_seconds`` after ``now``.

    The newest event wins, so one stamped by a clock far ahead would make every real update of
    its relationship stale until that time came. The intake judges each message by this rule
    when it receives it; a retry or a replay of an event it once accepted lies further in the
    past each time, so the rule cannot turn against it later.
    """
    ahead = (event.occurred_at - now).total_seconds()
    if ahead > max_skew_seconds:
        raise InvalidEvent(
            f"occurredAt: {event.occurred_at.isoformat()} is {ahead:.0f} s ahead of the worker's "
            f"clock; at most {max_skew_seconds:g} s are tolerated (CCSYNC_MAX_CLOCK_SKEW_SECONDS)"
        )


def correlation_id(tenant: str, event_id: str) -> uuid.UUID:
    """The X-Correlation-Id of an event: the same on every attempt, redelivery and replay.

    UUIDv5 over the JSON array ``[tenant, eventId]``: the encoding is unambiguous, so two
    different (tenant, eventId) pairs never produce the same name.
    """
    name = json.dumps([tenant, event_id], ensure_ascii=False, separators=(",", ":"))
    return uuid.uuid5(CORRELATION_NAMESPACE, name)


def decode_event(
    body: bytes, content_type: str | None, headers: Mapping[str, Any]
) -> IdentifierChanged:
    """Turn one AMQP message into an event, or raise ``InvalidEvent`` saying why."""
    try:
        return parse_event(body, content_type, headers)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from None


def parse_event(
    body: bytes, content_type: str | None, headers: Mapping[str, Any]
) -> IdentifierChanged:
    """``decode_event`` for a caller that needs every failing field: the models' own
    ``ValidationError`` when fields fail, ``InvalidEvent`` when the body is no JSON object, the
    content type is not one of section 3 or a binary ``time`` header is an integer beyond any
    timestamp."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    binary_attributes = _binary_cloudevent_attributes(headers)
    if binary_attributes:
        return CloudEvent.model_validate(
            {**binary_attributes, "data": _json_object(body)}
        ).to_event()
    if media_type == CLOUDEVENTS_CONTENT_TYPE:
        return CloudEvent.model_validate(_json_object(body)).to_event()
    if media_type not in ("", "application/json"):
        raise InvalidEvent(f"content type {content_type!r} is not application/json")
    return IdentifierChanged.model_validate(_json_object(body))


def _binary_cloudevent_attributes(headers: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in headers.items():
        # One C-level test per header: most messages carry no attribute at all.
        if not (isinstance(key, str) and key.startswith(CLOUDEVENTS_HEADER_PREFIXES)):
            continue
        for prefix in CLOUDEVENTS_HEADER_PREFIXES:
            if key.startswith(prefix):
                name = key[len(prefix) :]
                break
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif name == "time":
            value = _typed_time(value)
        attributes[name] = value
    return attributes


def _typed_time(value: object) -> object:
    """``time`` as RFC 3339 text when an AMQP header carries it typed; any other value as is.

    An AMQP timestamp arrives as a ``datetime`` (naive from py-amqp: UTC, whole seconds); the
    CloudEvents SDK's AMQP binding writes the AMQP 1.0 timestamp, an integer of milliseconds since
    the epoch, which AMQP 0-9-1 carries as a plain integer.
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return (_EPOCH + timedelta(milliseconds=value)).isoformat()
        except OverflowError:
            raise InvalidEvent(
                "time: an integer is read as milliseconds since 1970-01-01T00:00:00Z (an AMQP "
                "timestamp); this one is out of range of any date"
            ) from None
    return value


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidEvent("body is not JSON this system accepts: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidEvent(f"body is not JSON this system accepts: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEvent(f"body must be a JSON object, not {type(value).__name__}")
    return value


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line: each failing field with pydantic's reason, never the input value."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
