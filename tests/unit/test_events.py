"""The event contract (contract section 3): decoding, validation errors and the correlation id."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from worker.constants import EVENT_TYPE
from worker.events import (
    CloudEvent,
    IdentifierChanged,
    correlation_id,
    decode_event,
    describe_validation_error,
    reject_if_ahead,
)
from worker.exceptions import InvalidEvent

CUSTOMER = "3f0e6f43-3b0d-4b1c-9a56-0a7a2b1c1d11"
RESELLER = "9c1d2e3f-4a5b-4c6d-8e7f-901234567890"
SECRET = "sk_live_51HxQeZSuperSecretValue0123456789"


def native(**changes: Any) -> dict[str, Any]:
    """A valid native event; ``changes`` override fields, a value of ``...`` removes the key."""
    event: dict[str, Any] = {
        "eventId": "evt-1",
        "eventType": EVENT_TYPE,
        "occurredAt": "2024-05-01T12:30:00+02:00",
        "tenant": "portal.example.com",
        "customerId": CUSTOMER,
        "resellerId": RESELLER,
        "internalIdentifier": "CRM-0042",
        "source": "crm",
    }
    for key, value in changes.items():
        if value is ...:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def encode(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def decode(
    value: object,
    content_type: str | None = "application/json",
    headers: dict[str, Any] | None = None,
) -> IdentifierChanged:
    return decode_event(encode(value), content_type, headers or {})


def rejection(
    value: object,
    content_type: str | None = "application/json",
    headers: dict[str, Any] | None = None,
) -> str:
    """Decode, expect InvalidEvent, and return its message."""
    with pytest.raises(InvalidEvent) as caught:
        decode(value, content_type, headers)
    return str(caught.value)


def assert_readable(message: str) -> None:
    assert message.strip(), "the reason must not be empty"
    assert "\n" not in message, "the reason must be one line"
    assert len(message) < 500


# --- a valid native event --------------------------------------------------------------------


def test_given_a_valid_native_event_when_decoded_then_every_field_is_mapped() -> None:
    event = decode(native())

    assert event.event_id == "evt-1"
    assert event.event_type == EVENT_TYPE
    assert event.occurred_at == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=2)
    assert event.tenant == "portal.example.com"
    assert event.customer_id == uuid.UUID(CUSTOMER)
    assert event.reseller_id == uuid.UUID(RESELLER)
    assert event.internal_identifier == "CRM-0042"
    assert event.source == "crm"


def test_given_unknown_fields_when_decoded_then_they_are_ignored() -> None:
    event = decode(native(priority="high", nested={"a": [1, 2]}, schemaVersion=3))

    assert event.event_id == "evt-1"
    assert not hasattr(event, "priority")
    assert "priority" not in event.to_wire()


# --- eventId ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 200])
def test_given_event_id_of_1_to_200_chars_then_it_is_accepted(length: int) -> None:
    assert decode(native(eventId="e" * length)).event_id == "e" * length


@pytest.mark.parametrize("event_id", ["", "e" * 201, 42, None, ...])
def test_given_event_id_empty_too_long_not_a_string_or_missing_then_invalid_event(
    event_id: object,
) -> None:
    message = rejection(native(eventId=event_id))

    assert "eventId" in message
    assert_readable(message)


# --- eventType -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["customer.created", "customer.internal-identifier.changed.v2", "", None, ...]
)
def test_given_any_other_event_type_then_invalid_event_naming_event_type(
    event_type: object,
) -> None:
    message = rejection(native(eventType=event_type))

    assert "eventType" in message
    assert_readable(message)


# --- occurredAt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("2024-05-01T12:30:00Z", timedelta(0)),
        ("2024-05-01T12:30:00+02:00", timedelta(hours=2)),
        ("2024-05-01T12:30:00.123456-05:30", timedelta(hours=-5, minutes=-30)),
    ],
)
def test_given_occurred_at_with_an_offset_then_it_is_accepted_with_that_offset(
    text: str, offset: timedelta
) -> None:
    occurred_at = decode(native(occurredAt=text)).occurred_at

    assert occurred_at.utcoffset() == offset
    assert occurred_at.replace(tzinfo=timezone(offset)) == occurred_at


@pytest.mark.parametrize("text", ["2024-05-01T12:30:00", "2024-05-01", "yesterday", ""])
def test_given_occurred_at_without_offset_or_unparsable_then_invalid_event(text: str) -> None:
    message = rejection(native(occurredAt=text))

    assert "occurredAt" in message
    assert_readable(message)


@pytest.mark.parametrize(
    "value", [1714559400, 1714559400.5, True, ["2024-05-01T12:30:00Z"], None, ...]
)
def test_given_occurred_at_not_a_string_or_missing_then_invalid_event(value: object) -> None:
    """Given an epoch number (which pydantic alone would take) or any non-string, Then rejected."""
    message = rejection(native(occurredAt=value))

    assert "occurredAt" in message
    assert_readable(message)


@pytest.mark.parametrize("text", ["1714559400", "1714559400.5"])
def test_given_occurred_at_an_epoch_number_inside_a_string_then_invalid_event(text: str) -> None:
    """The contract promises an RFC 3339 timestamp with offset; an epoch in quotes is not one."""
    message = rejection(native(occurredAt=text))

    assert "occurredAt" in message


# --- tenant ----------------------------------------------------------------------------------


def test_given_no_tenant_then_the_event_is_valid_with_tenant_none() -> None:
    assert decode(native(tenant=...)).tenant is None


def test_given_an_empty_tenant_then_invalid_event() -> None:
    """X-Tenant must not be empty (openapi.yaml minLength 1)."""
    assert "tenant" in rejection(native(tenant=""))


# --- customerId ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "customer_id", ["not-a-uuid", "3f0e6f43-3b0d-4b1c-9a56", "", 12345, None, ...]
)
def test_given_customer_id_not_a_uuid_or_missing_then_invalid_event(customer_id: object) -> None:
    message = rejection(native(customerId=customer_id))

    assert "customerId" in message
    assert_readable(message)


# --- resellerId ------------------------------------------------------------------------------


@pytest.mark.parametrize("reseller_id", [None, ...])
def test_given_reseller_id_null_or_missing_then_the_own_relationship_is_meant(
    reseller_id: object,
) -> None:
    assert decode(native(resellerId=reseller_id)).reseller_id is None


@pytest.mark.parametrize("reseller_id", ["reseller-7", "", 7])
def test_given_reseller_id_not_a_uuid_then_invalid_event(reseller_id: object) -> None:
    message = rejection(native(resellerId=reseller_id))

    assert "resellerId" in message
    assert_readable(message)


# --- internalIdentifier ----------------------------------------------------------------------


def test_given_internal_identifier_of_255_chars_then_it_is_accepted() -> None:
    assert decode(native(internalIdentifier="x" * 255)).internal_identifier == "x" * 255


def test_given_internal_identifier_of_256_chars_then_invalid_event() -> None:
    message = rejection(native(internalIdentifier="x" * 256))

    assert "internalIdentifier" in message
    assert "x" * 256 not in message


def test_given_internal_identifier_null_then_the_event_clears_it() -> None:
    event = decode(native(internalIdentifier=None))

    assert event.internal_identifier is None
    assert event.to_wire()["internalIdentifier"] is None


def test_given_internal_identifier_key_missing_then_invalid_event() -> None:
    """The key must be present: a forgotten field must not silently clear the identifier."""
    message = rejection(native(internalIdentifier=...))

    assert "internalIdentifier" in message


def test_given_internal_identifier_not_a_string_then_invalid_event() -> None:
    assert "internalIdentifier" in rejection(native(internalIdentifier=42))


# --- content type and body -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/json; charset=utf-8"]
)
def test_given_content_type_none_or_json_then_the_event_is_accepted(
    content_type: str | None,
) -> None:
    assert decode(native(), content_type).event_id == "evt-1"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-protobuf"]
)
def test_given_a_non_json_content_type_then_invalid_event_naming_it(content_type: str) -> None:
    message = rejection(native(), content_type)

    assert content_type in message
    assert_readable(message)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"eventId": "evt-1",', "JSON"),
        (b"", "JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        ('{"eventId": "caf\u00e9"}'.encode("latin-1"), "UTF-8"),
        (b"[1, 2, 3]", "object"),
        (b'"just a string"', "object"),
        (b"null", "object"),
    ],
)
def test_given_a_body_that_is_not_a_json_object_then_invalid_event_says_why(
    body: bytes, says: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(body, "application/json", {})

    assert says in str(caught.value)
    assert_readable(str(caught.value))


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_given_deeply_nested_json_then_invalid_event_not_recursion_error(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(body, None, {})

    assert_readable(str(caught.value))


# --- CloudEvents -----------------------------------------------------------------------------


def cloud_event_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tenant": "portal.example.com",
        "customerId": CUSTOMER,
        "resellerId": RESELLER,
        "internalIdentifier": "CRM-0042",
    }
    data.update(changes)
    return data


def structured(**attributes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "id": "ce-1",
        "source": "urn:crm:eu",
        "time": "2024-05-01T12:30:00Z",
        "datacontenttype": "application/json",
        "data": cloud_event_data(),
    }
    for key, value in attributes.items():
        if value is ...:
            envelope.pop(key, None)
        else:
            envelope[key] = value
    return envelope


def binary_headers(
    prefix: str = "cloudEvents:", as_bytes: bool = False, **changes: Any
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "id": "ce-1",
        "source": "urn:crm:eu",
        "time": "2024-05-01T12:30:00Z",
    }
    for key, value in changes.items():
        if value is ...:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return {
        prefix + key: value.encode("utf-8") if as_bytes else value
        for key, value in attributes.items()
    }


def assert_mapped_from_cloud_event(event: IdentifierChanged) -> None:
    assert event.event_id == "ce-1"
    assert event.event_type == EVENT_TYPE
    assert event.occurred_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert event.source == "urn:crm:eu"
    assert event.tenant == "portal.example.com"
    assert event.customer_id == uuid.UUID(CUSTOMER)
    assert event.reseller_id == uuid.UUID(RESELLER)
    assert event.internal_identifier == "CRM-0042"


@pytest.mark.parametrize(
    "content_type", ["application/cloudevents+json", "application/cloudevents+json; charset=utf-8"]
)
def test_given_a_structured_cloud_event_then_id_time_source_and_data_are_mapped(
    content_type: str,
) -> None:
    assert_mapped_from_cloud_event(decode(structured(), content_type))


@pytest.mark.parametrize("prefix", ["cloudEvents:", "cloudEvents_"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str-headers", "bytes-headers"])
def test_given_a_binary_cloud_event_then_headers_and_body_are_mapped(
    prefix: str, as_bytes: bool
) -> None:
    headers = {**binary_headers(prefix, as_bytes), "x-unrelated": "kept out"}

    event = decode(cloud_event_data(), "application/json", headers)

    assert_mapped_from_cloud_event(event)


def test_given_a_cloud_event_with_null_reseller_and_identifier_then_both_are_none() -> None:
    event = decode(
        structured(data=cloud_event_data(resellerId=None, internalIdentifier=None)),
        "application/cloudevents+json",
    )

    assert event.reseller_id is None
    assert event.internal_identifier is None


def _reject_cloud_event(mode: str, **changes: Any) -> str:
    if mode == "structured":
        return rejection(structured(**changes), "application/cloudevents+json")
    return rejection(cloud_event_data(), "application/json", binary_headers(**changes))


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_given_a_cloud_event_without_time_then_invalid_event_naming_time(mode: str) -> None:
    message = _reject_cloud_event(mode, time=...)

    assert "time" in message
    assert_readable(message)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_given_a_cloud_event_with_time_without_offset_then_invalid_event(mode: str) -> None:
    assert "time" in _reject_cloud_event(mode, time="2024-05-01T12:30:00")


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize("version", ["0.3", "2.0"])
def test_given_a_cloud_event_of_another_specversion_then_invalid_event(
    mode: str, version: str
) -> None:
    assert "specversion" in _reject_cloud_event(mode, specversion=version)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_given_a_cloud_event_of_another_type_then_invalid_event(mode: str) -> None:
    assert "type" in _reject_cloud_event(mode, type="com.example.customer.created")


def test_given_a_structured_cloud_event_with_bad_data_then_the_field_is_named_in_data() -> None:
    message = rejection(
        structured(data=cloud_event_data(customerId="nope")), "application/cloudevents+json"
    )

    assert "data.customerId" in message


def test_given_a_binary_cloud_event_whose_body_is_not_json_then_invalid_event() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(b"<xml/>", "application/json", binary_headers())

    assert "JSON" in str(caught.value)


# --- correlation id --------------------------------------------------------------------------


def test_given_the_same_tenant_and_event_id_then_the_correlation_id_is_the_same() -> None:
    assert correlation_id("portal.example.com", "evt-1") == correlation_id(
        "portal.example.com", "evt-1"
    )


def test_the_correlation_id_rule_is_uuid5_over_the_json_pair_and_never_changes() -> None:
    """Pinned: changing the rule would change every X-Correlation-Id already sent."""
    namespace = uuid.UUID("5b0f4f7e-2a4c-5d69-9d0e-6363737973e1")
    expected = uuid.uuid5(namespace, '["portal.example.com","evt-1"]')

    assert correlation_id("portal.example.com", "evt-1") == expected
    assert str(expected) == "38934d26-fbbb-57ff-a7ae-24704752dd8e"


def test_given_a_different_tenant_or_event_id_then_the_correlation_id_differs() -> None:
    base = correlation_id("portal.example.com", "evt-1")

    assert correlation_id("other.example.com", "evt-1") != base
    assert correlation_id("portal.example.com", "evt-2") != base


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a", "b c"), ("a b", "c")),
        (("a", "b,c"), ("a,b", "c")),
        (("a", "bc"), ("ab", "c")),
        (('a"', "b"), ("a", '"b')),
        (("a", '","b'), ('a","', "b")),
    ],
)
def test_given_pairs_that_concatenate_alike_then_their_correlation_ids_differ(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assert correlation_id(*first) != correlation_id(*second)


def test_the_correlation_id_is_a_version_5_rfc_4122_uuid() -> None:
    value = correlation_id("portal.example.com", "evt-1")

    assert value.version == 5
    assert value.variant == uuid.RFC_4122
    assert uuid.UUID(str(value)) == value


# --- validation messages never carry the input -----------------------------------------------


@pytest.mark.parametrize(
    "field", ["eventType", "occurredAt", "customerId", "resellerId", "eventId", "tenant"]
)
def test_given_a_secret_in_a_bad_field_then_the_message_does_not_contain_it(field: str) -> None:
    value: object = SECRET * 6 if field == "eventId" else SECRET
    if field == "tenant":
        value = [SECRET]
    with pytest.raises(ValidationError) as caught:
        IdentifierChanged.model_validate(native(**{field: value}))

    message = describe_validation_error(caught.value)

    assert field in message
    assert SECRET not in message
    assert SECRET not in rejection(native(**{field: value}))


def test_given_a_secret_in_bad_cloud_event_data_then_the_message_does_not_contain_it() -> None:
    with pytest.raises(ValidationError) as caught:
        CloudEvent.model_validate(structured(data=cloud_event_data(resellerId=SECRET)))

    message = describe_validation_error(caught.value)

    assert "data.resellerId" in message
    assert SECRET not in message


def test_given_several_bad_fields_then_each_is_named_in_one_line() -> None:
    with pytest.raises(ValidationError) as caught:
        IdentifierChanged.model_validate(native(eventId="", customerId="x", eventType="y"))

    message = describe_validation_error(caught.value)

    for field in ("eventId", "customerId", "eventType"):
        assert field in message
    assert_readable(message)


# --- a producer's clock ahead of the worker's ---------------------------------------------


NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(seconds=300), timedelta(days=-400)])
def test_given_occurred_at_within_the_tolerated_skew_or_past_then_it_is_accepted(
    ahead: timedelta,
) -> None:
    event = decode(native(occurredAt=(NOW + ahead).isoformat()))

    reject_if_ahead(event, now=NOW, max_skew_seconds=300)


@pytest.mark.parametrize("ahead", [timedelta(seconds=301), timedelta(days=3 * 365)])
def test_given_occurred_at_further_ahead_than_the_tolerated_skew_then_invalid_event(
    ahead: timedelta,
) -> None:
    # An offset of its own does not hide it: the instant counts, not the wall-clock text
    event = decode(
        native(occurredAt=(NOW + ahead).astimezone(timezone(timedelta(hours=-9))).isoformat())
    )

    with pytest.raises(InvalidEvent) as caught:
        reject_if_ahead(event, now=NOW, max_skew_seconds=300)

    assert_readable(str(caught.value))
    assert "occurredAt" in str(caught.value)
    assert "CCSYNC_MAX_CLOCK_SKEW_SECONDS" in str(caught.value)
