"""The sandbox's stand-in for Microsoft Entra's client-credentials token endpoint.

The flow it stands in for is described in docs/cloudcockpit-api.md.

Errors mimic Entra's JSON (``error``, ``error_description`` with an AADSTS code, ``error_codes``…)
so a client's error handling meets the shapes it will meet in production.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import parse_qs

from worker.sandbox.protocol import Reply, json_reply

TOKEN_PATH_SUFFIX: Final = "/oauth2/v2.0/token"
REDACTED: Final = "***"
_NO_STORE: Final = (("Cache-Control", "no-store, no-cache"), ("Pragma", "no-cache"))
#: Tokens beyond this count trigger a sweep of expired ones: a long benchmark cannot grow the map.
_SWEEP_ABOVE: Final = 10_000

TokenStatus = Literal["valid", "expired", "unknown"]


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    scope: str | None


class TokenStore:
    """Issued tokens and their monotonic-clock expiry; guarded by the caller's lock."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, ttl_seconds: int, now: float) -> str:
        if len(self._expiry) > _SWEEP_ABOVE:
            self._expiry = {t: at for t, at in self._expiry.items() if at > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + ttl_seconds
        return token

    def status(self, token: str, now: float) -> TokenStatus:
        expiry = self._expiry.get(token)
        if expiry is None:
            return "unknown"
        return "valid" if expiry > now else "expired"

    def expire_all(self) -> None:
        self._expiry = dict.fromkeys(self._expiry, 0.0)

    def clear(self) -> None:
        self._expiry.clear()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def parse_form(body: bytes) -> dict[str, str]:
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def redacted_form(body: bytes) -> dict[str, str]:
    """The token request as the journal keeps it: the client secret never leaves the sandbox."""
    form = parse_form(body)
    if "client_secret" in form:
        form["client_secret"] = REDACTED
    return form


def _entra_error(status: int, *, error: str, code: int, message: str) -> Reply:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    payload = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id} "
            f"Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return json_reply(status, payload, headers=_NO_STORE)


def _missing(parameter: str) -> Reply:
    message = f"The request body must contain the following parameter: '{parameter}'."
    return _entra_error(400, error="invalid_request", code=900144, message=message)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """client_secret_basic: Entra accepts the credentials in an HTTP Basic header too."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def check_token_request(
    headers: Mapping[str, str], body: bytes, expected: ClientCredentials
) -> Reply | None:
    """The Entra-like rejection of a token request, or None when a token may be issued."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        message = "The request body must be form-encoded (application/x-www-form-urlencoded)."
        return _entra_error(400, error="invalid_request", code=900144, message=message)
    form = parse_form(body)
    basic = _basic_credentials(headers.get("authorization"))
    if basic is not None:
        form.setdefault("client_id", basic[0])
        form.setdefault("client_secret", basic[1])
    grant_type = form.get("grant_type")
    if not grant_type:
        return _missing("grant_type")
    if grant_type != "client_credentials":
        message = (
            f"The provided value for the input parameter 'grant_type' is invalid: {grant_type}."
        )
        return _entra_error(400, error="unsupported_grant_type", code=70003, message=message)
    client_id = form.get("client_id")
    if not client_id:
        return _missing("client_id")
    if not hmac.compare_digest(client_id.encode(), expected.client_id.encode()):
        message = f"Application with identifier '{client_id}' was not found in the directory."
        return _entra_error(400, error="unauthorized_client", code=700016, message=message)
    secret = form.get("client_secret")
    if not secret:
        message = "The request body must contain the following parameter: 'client_secret'."
        return _entra_error(401, error="invalid_client", code=7000218, message=message)
    if not hmac.compare_digest(secret.encode(), expected.client_secret.encode()):
        message = f"Invalid client secret provided for app '{client_id}'."
        return _entra_error(401, error="invalid_client", code=7000215, message=message)
    scope = form.get("scope")
    if not scope:
        return _missing("scope")
    if expected.scope is not None and scope != expected.scope:
        message = f"The provided request must include a valid 'scope' input parameter: {scope}."
        return _entra_error(400, error="invalid_scope", code=70011, message=message)
    return None


def token_reply(token: str, ttl_seconds: int) -> Reply:
    payload = {
        "token_type": "Bearer",
        "expires_in": ttl_seconds,
        "ext_expires_in": ttl_seconds,
        "access_token": token,
    }
    return json_reply(200, payload, headers=_NO_STORE)
