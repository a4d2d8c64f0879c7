"""What each answer of CloudCockpit means for the event: the one place answers are classified.

| answer                                   | ccsync does                                      |
|------------------------------------------|--------------------------------------------------|
| 2xx                                      | applied                                          |
| 401                                      | renew the token once and call again              |
| 429                                      | defer after ``Retry-After``, no attempt spent    |
| 400, 403, 404, any other 4xx             | ``api-rejected``: dead-letter, keep the error    |
| 5xx, timeout, refused/dropped connection | retry with backoff, then ``retries-exhausted``   |
| a body that does not decode (no usable   | as a 5xx                                         |
| answer: ``Content-Encoding`` mismatch)   |                                                  |

Whether a failed call may still be applied (``ApiUnavailable.unsettled``): only an answer that
proves it was not keeps the relationship free for newer events at once. That is a 4xx (401 and
429 included: CloudCockpit refused the call before changing anything) and a failure before the
request left (refused connection, connect or pool timeout). Every 5xx, a read timeout, a
dropped connection and an answer that does not decode may be applied later: the relationship
stays held for the unanswered hold.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from worker.constants import MAX_ERROR_CHARS
from worker.exceptions import ApiRejected, ApiUnavailable, RateLimited


def raise_for_answer(response: httpx.Response) -> None:
    """Return if the change was applied; raise the exception that says what to do otherwise.

    401 is not handled here: renewing the token is the client's job, which sees it first.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    error = describe_error(response)
    if status == 429:
        raise RateLimited(
            error, status, retry_after=parse_retry_after(response.headers.get("retry-after"))
        )
    if 400 <= status < 500:
        raise ApiRejected(error, status)
    failure = ApiUnavailable(error, status)
    # Only a 4xx proves the change was not applied (the API refused it before changing anything).
    # A 5xx does not: a gateway's 502, 503 or 504 may come while the backend still applies the
    # call, and CloudCockpit does not document that its own 500 leaves nothing applied.
    failure.unsettled = True
    raise failure


#: Failures before the request left: the server cannot have applied anything.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: httpx's ways of leaving a call without an answer ccsync can use: none came (a transport
#: error), or one came whose body does not decode as its ``Content-Encoding`` says.
NO_USABLE_ANSWER = (httpx.TransportError, httpx.DecodingError)


def describe_transport_error(exc: httpx.TransportError | httpx.DecodingError) -> ApiUnavailable:
    """A call that got no answer, or none it could use (``NO_USABLE_ANSWER``); the text names
    the kind of failure, never a header or a URL.

    Unless it failed before the request was sent, the server may yet apply it: ``unsettled``.
    """
    kind = type(exc).__name__
    if isinstance(exc, httpx.DecodingError):
        failure = ApiUnavailable(
            f"no usable answer from CloudCockpit: {kind} (its body does not decode as its "
            "Content-Encoding says)"
        )
    else:
        failure = ApiUnavailable(f"no answer from CloudCockpit: {kind}")
    failure.unsettled = not isinstance(exc, NOT_SENT)
    return failure


def describe_error(response: httpx.Response) -> str:
    """The API's error body as one short line: type, description and each property's errors."""
    prefix = f"HTTP {response.status_code}"
    try:
        body: Any = response.json()
    except (ValueError, RecursionError):
        return prefix
    if not isinstance(body, dict):
        return prefix
    parts = [prefix]
    for key in ("type", "description"):
        if body.get(key):
            parts.append(str(body[key]))
    errors = body.get("errors")
    for item in errors if isinstance(errors, list) else []:
        if isinstance(item, dict):
            descriptions = item.get("description") or []
            if not isinstance(descriptions, list):
                descriptions = [descriptions]
            parts.append(f"{item.get('propertyName') or '?'}: {', '.join(map(str, descriptions))}")
    return "; ".join(parts)[:MAX_ERROR_CHARS]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
