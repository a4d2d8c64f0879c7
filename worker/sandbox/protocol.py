"""CloudCockpit's wire shapes as the sandbox speaks them (openapi.yaml beside this module).

Kept free of HTTP and of state so the validation rules can be unit-tested and compared with the
OpenAPI schema: the sandbox must reject exactly the bodies the schema rejects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

MAX_INTERNAL_IDENTIFIER: Final = 255
PATCH_PROPERTIES: Final = ("internalIdentifier", "resellerId")

# The hyphenated 8-4-4-4-12 form only: the OpenAPI "uuid" format checker rejects braces, URNs and
# bare hex, so the sandbox does too.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

_ERROR_TYPES: Final = {
    400: "ValidationError",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

_UNKNOWN_PROPERTY: Final = "Unknown property: only internalIdentifier and resellerId are allowed."

ErrorItem = dict[str, Any]


def canonical_uuid(value: str) -> str | None:
    """The lower-case form of a UUID string, or None when it is not one."""
    if not _UUID.fullmatch(value):
        return None
    lowered = value.lower()
    return value if lowered == value else lowered  # the journal keeps one copy, not two


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or status_phrase(status).replace(" ", "").replace("-", "")


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request as the sandbox logic sees it; header names are lower-case."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, payload: object, *, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, body, "application/json; charset=utf-8", headers)


def error_reply(
    status: int,
    description: str,
    *,
    correlation_id: str | None,
    errors: list[ErrorItem] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """The error body openapi.yaml gives 400/404/500 (and the sandbox gives other 4xx/5xx)."""
    payload = {
        "statusCode": status,
        "type": error_type(status),
        "description": description,
        "correlationId": correlation_id,
        "errors": errors,
    }
    return json_reply(status, payload, headers=headers)


def validation_reply(errors: list[ErrorItem], correlation_id: str | None) -> Reply:
    return error_reply(
        400, "One or more validation errors occurred.", correlation_id=correlation_id, errors=errors
    )


def property_error(name: str, *messages: str) -> ErrorItem:
    return {"propertyName": name, "description": list(messages)}


def request_errors(
    headers: Mapping[str, str], customer_raw: str
) -> tuple[list[ErrorItem], str | None]:
    """Errors in X-Tenant, X-Correlation-Id and the customerId path segment."""
    errors: list[ErrorItem] = []
    if not headers.get("x-tenant"):
        errors.append(property_error("X-Tenant", "The X-Tenant header is required."))
    correlation = headers.get("x-correlation-id")
    if correlation is not None and canonical_uuid(correlation) is None:
        errors.append(property_error("X-Correlation-Id", "The X-Correlation-Id must be a UUID."))
    customer_id = canonical_uuid(customer_raw)
    if customer_id is None:
        errors.append(property_error("customerId", f"'{customer_raw}' is not a valid UUID."))
    return errors, customer_id


@dataclass(frozen=True, slots=True)
class PatchBody:
    internal_identifier: str | None
    reseller_id: str | None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_patch_body(
    raw: bytes, content_type: str | None
) -> tuple[PatchBody | None, list[ErrorItem]]:
    """The PATCH body per openapi.yaml, or one error per offending property.

    A missing ``internalIdentifier`` clears the value, like an explicit null: the schema requires
    neither property, and the documented body always carries both.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        message = "The request body must be sent as application/json."
        return None, [property_error("Content-Type", message)]
    if not raw.strip():
        return None, [property_error("$", "A non-empty request body is required.")]
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return None, [property_error("$", f"The request body is not valid JSON: {exc}")]
    if not isinstance(data, dict):
        return None, [property_error("$", "The request body must be a JSON object.")]
    errors = [
        property_error(name, _UNKNOWN_PROPERTY) for name in data if name not in PATCH_PROPERTIES
    ]
    identifier = data.get("internalIdentifier")
    if identifier is not None and not isinstance(identifier, str):
        errors.append(property_error("internalIdentifier", "Must be a string or null."))
    elif isinstance(identifier, str) and len(identifier) > MAX_INTERNAL_IDENTIFIER:
        errors.append(
            property_error(
                "internalIdentifier",
                f"Must be at most {MAX_INTERNAL_IDENTIFIER} characters (got {len(identifier)}).",
            )
        )
    reseller = data.get("resellerId")
    reseller_id = canonical_uuid(reseller) if isinstance(reseller, str) else None
    if reseller is not None and reseller_id is None:
        errors.append(property_error("resellerId", "Must be a UUID string or null."))
    if errors:
        return None, errors
    return PatchBody(identifier, reseller_id), []
