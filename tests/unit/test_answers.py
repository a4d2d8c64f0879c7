"""What each answer of CloudCockpit means: ``raise_for_answer`` and its helpers."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx
import pytest

from worker.cloudcockpit.answers import parse_retry_after, raise_for_answer
from worker.constants import MAX_ERROR_CHARS
from worker.exceptions import (
    ApiError,
    ApiRejected,
    ApiUnavailable,
    RateLimited,
    TransientFailure,
)

ERROR_BODY: dict[str, Any] = {
    "statusCode": 400,
    "type": "ValidationError",
    "description": "The request is invalid.",
    "correlationId": "b7f0b0a4-8a43-4bb8-9f5f-2f6f0f2b3c4d",
    "errors": [
        {
            "propertyName": "InternalIdentifier",
            "description": ["Too long.", "Contains forbidden characters."],
        },
        {"propertyName": "ResellerId", "description": ["No such relationship."]},
    ],
}


def response(
    status: int, body: object = None, *, content: bytes | None = None, **headers: str
) -> httpx.Response:
    if content is None and body is not None:
        content = json.dumps(body).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    return httpx.Response(status, content=content or b"", headers=headers)


def rate_limited(retry_after: str | None) -> RateLimited:
    """A 429 whose Retry-After carries ``retry_after`` as raw latin-1 bytes, as on the wire."""
    headers = [] if retry_after is None else [(b"Retry-After", retry_after.encode("latin-1"))]
    with pytest.raises(RateLimited) as caught:
        raise_for_answer(httpx.Response(429, headers=headers))
    return caught.value


# --- applied ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
def test_given_a_2xx_answer_then_the_change_is_applied_and_nothing_is_raised(status: int) -> None:
    raise_for_answer(response(status))  # any exception fails the test


# --- rejected --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 418])
def test_given_a_4xx_answer_then_api_rejected_with_that_status(status: int) -> None:
    with pytest.raises(ApiRejected) as caught:
        raise_for_answer(response(status, {**ERROR_BODY, "statusCode": status}))

    assert caught.value.status == status
    assert not isinstance(caught.value, TransientFailure)
    assert f"HTTP {status}" in caught.value.error


def test_given_an_error_body_then_type_description_and_each_property_error_are_kept() -> None:
    with pytest.raises(ApiRejected) as caught:
        raise_for_answer(response(400, ERROR_BODY))

    error = caught.value.error
    assert "ValidationError" in error
    assert "The request is invalid." in error
    assert "InternalIdentifier: Too long., Contains forbidden characters." in error
    assert "ResellerId: No such relationship." in error
    assert str(caught.value) == error
    assert "\n" not in error


def test_given_a_403_without_body_then_api_rejected_with_just_the_status() -> None:
    with pytest.raises(ApiRejected) as caught:
        raise_for_answer(response(403))

    assert caught.value.status == 403
    assert caught.value.error == "HTTP 403"


def test_given_an_error_whose_description_is_a_string_then_it_is_kept() -> None:
    body = {"errors": [{"propertyName": "CustomerId", "description": "Unknown customer."}]}

    with pytest.raises(ApiRejected) as caught:
        raise_for_answer(response(404, body))

    assert "CustomerId: Unknown customer." in caught.value.error


# --- rate limited ----------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("5", 5.0), ("0", 0.0), (" 120 ", 120.0)])
def test_given_429_with_retry_after_seconds_then_rate_limited_for_that_long(
    header: str, seconds: float
) -> None:
    failure = rate_limited(header)

    assert failure.retry_after == seconds
    assert failure.status == 429
    assert isinstance(failure, TransientFailure)


def test_given_429_with_retry_after_as_http_date_then_the_seconds_until_then() -> None:
    when = email.utils.formatdate(time.time() + 90, usegmt=True)

    failure = rate_limited(when)

    assert failure.retry_after is not None
    assert 85 <= failure.retry_after <= 91


def test_given_429_with_retry_after_as_a_past_http_date_then_zero_seconds() -> None:
    assert rate_limited("Wed, 21 Oct 2015 07:28:00 GMT").retry_after == 0.0


def test_given_429_without_retry_after_then_rate_limited_without_a_wait() -> None:
    failure = rate_limited(None)

    assert failure.retry_after is None
    assert failure.status == 429


@pytest.mark.parametrize(
    "header", ["soon", "", "-5", "1.5", "5 seconds", "Someday, 99 Foo", "\u00b2"]
)
def test_given_429_with_garbage_retry_after_then_rate_limited_without_a_wait(header: str) -> None:
    """Given a Retry-After that is neither delta-seconds nor an HTTP-date, Then it is ignored."""
    assert rate_limited(header).retry_after is None


@pytest.mark.parametrize("value", [None, "", "abc", "-1", "\u00bd"])
def test_given_a_retry_after_value_that_is_not_ascii_seconds_or_a_date_then_none(
    value: str | None,
) -> None:
    assert parse_retry_after(value) is None


# --- unavailable -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_given_a_5xx_answer_then_api_unavailable_with_that_status(status: int) -> None:
    with pytest.raises(ApiUnavailable) as caught:
        raise_for_answer(response(status, {**ERROR_BODY, "statusCode": status}))

    assert caught.value.status == status
    assert not isinstance(caught.value, RateLimited)
    assert f"HTTP {status}" in caught.value.error
    assert "ValidationError" in caught.value.error


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_given_a_5xx_answer_then_the_call_may_still_be_applied(status: int) -> None:
    # A gateway's 5xx can come while the backend still applies the call: nothing proves it was not.
    with pytest.raises(ApiUnavailable) as caught:
        raise_for_answer(response(status, content=b"<html>Bad Gateway</html>"))

    assert caught.value.unsettled


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 429])
def test_given_a_4xx_answer_then_the_call_was_surely_not_applied(status: int) -> None:
    with pytest.raises(ApiError) as caught:
        raise_for_answer(response(status, {**ERROR_BODY, "statusCode": status}))

    assert not getattr(caught.value, "unsettled", False)


# --- odd error bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"upstream connect error",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'"text"',
        b"null",
    ],
)
def test_given_an_error_body_that_is_not_a_json_object_then_the_status_alone_is_reported(
    content: bytes,
) -> None:
    with pytest.raises(ApiUnavailable) as caught:
        raise_for_answer(response(502, content=content))

    assert caught.value.error == "HTTP 502"
    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (400, b'{"errors": 5}'),
        (400, b'{"errors": [1, null, "x"], "type": 7}'),
        (500, b"[" * 100_000),
    ],
    ids=["errors-not-a-list", "errors-items-not-objects", "deeply-nested"],
)
def test_given_an_error_body_of_unexpected_shape_then_the_answer_is_still_classified(
    status: int, content: bytes
) -> None:
    """A gateway or a bug may answer anything; classifying must never crash with another error."""
    expected = ApiRejected if status < 500 else ApiUnavailable

    with pytest.raises(expected) as caught:
        raise_for_answer(response(status, content=content))

    assert caught.value.status == status
    assert caught.value.error.startswith(f"HTTP {status}")


def test_given_a_huge_error_body_then_the_error_text_is_capped() -> None:
    body = {**ERROR_BODY, "description": "d" * 20_000, "errors": [ERROR_BODY["errors"][0]] * 500}

    with pytest.raises(ApiRejected) as caught:
        raise_for_answer(response(400, body))

    assert len(caught.value.error) <= MAX_ERROR_CHARS
    assert caught.value.error.startswith("HTTP 400")
