"""Who may post events: a bearer token (``CCSYNC_INGEST_TOKEN``) or a Standard Webhooks signature
(``CCSYNC_INGEST_SECRET``). Every comparison of a secret runs in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Self

from worker.exceptions import CcsyncError
from worker.settings import Settings, webhook_secret_key

#: Seconds a ``webhook-timestamp`` may be off this server's clock, either way, before the request
#: counts as a replay (Standard Webhooks' recommendation).
WEBHOOK_TOLERANCE_SECONDS: Final = 300
#: The signature scheme accepted in ``webhook-signature``: HMAC-SHA256 (symmetric).
SIGNATURE_VERSION: Final = "v1"

_SECONDS = re.compile(r"^[0-9]{1,12}$")


class Unauthenticated(CcsyncError):
    """Answer 401: the request carries no valid credential; the message says what was wrong,
    never a secret."""


@dataclass(frozen=True)
class SignedRequest:
    """What a valid Standard Webhooks signature vouches for: the message's id and timestamp."""

    message_id: str
    timestamp: int


@dataclass(frozen=True, repr=False)
class Credentials:
    """What a request may prove: the token and the HMAC key, either possibly absent."""

    token: bytes | None
    webhook_key: bytes | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        token = settings.ingest_token
        secret = settings.ingest_secret
        return cls(
            token=token.get_secret_value().encode() if token is not None else None,
            webhook_key=webhook_secret_key(secret) if secret is not None else None,
        )


def authenticate(
    credentials: Credentials, headers: Mapping[str, str], body: bytes, *, now: float
) -> SignedRequest | None:
    """Return when ``headers`` carry the bearer token (None) or a valid signature of ``body``
    (the signed message's id and timestamp, by which repeated deliveries are told).

    ``headers`` must be case-insensitive (names in lower case are looked up). ``now`` is the
    server's clock, in seconds since the epoch. Raises ``Unauthenticated`` saying why each
    credential offered failed, or that none was offered.
    """
    return _authenticate(credentials, headers, body, now=now)


def authenticate_headers(
    credentials: Credentials, headers: Mapping[str, str], *, now: float
) -> None:
    """Raise ``Unauthenticated``, as ``authenticate`` would, when ``headers`` alone show that no
    body could make the request valid, so that such a request's body is never read.

    Returning is not authentication: a signature still has to be checked against the body.
    """
    _authenticate(credentials, headers, None, now=now)


def _authenticate(
    credentials: Credentials, headers: Mapping[str, str], body: bytes | None, *, now: float
) -> SignedRequest | None:
    """``authenticate``; with ``body`` None, a signature whose headers pass counts as valid."""
    reasons: list[str] = []
    authorization = headers.get("authorization")
    if authorization is not None:
        reason = _check_bearer(credentials.token, authorization)
        if reason is None:
            return None
        reasons.append(reason)
    if any(name in headers for name in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        reason = _check_signature(credentials.webhook_key, headers, body, now=now)
        if reason is None:
            return SignedRequest(headers["webhook-id"], int(headers["webhook-timestamp"]))
        reasons.append(reason)
    if not reasons:
        reasons.append(
            "no credentials: send 'Authorization: Bearer <token>', or sign the request with "
            "webhook-id, webhook-timestamp and webhook-signature (Standard Webhooks)"
        )
    raise Unauthenticated("; ".join(reasons))


def _check_bearer(token: bytes | None, authorization: str) -> str | None:
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "the Authorization header must be 'Bearer <token>'"
    if token is None:
        return "bearer tokens are not accepted here: sign the request instead"
    if not hmac.compare_digest(given.strip().encode(), token):
        return "the bearer token is not valid"
    return None


def _check_signature(
    key: bytes | None, headers: Mapping[str, str], body: bytes | None, *, now: float
) -> str | None:
    if key is None:
        return "webhook signatures are not accepted here: send a bearer token instead"
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        return "a signed request needs all of webhook-id, webhook-timestamp, webhook-signature"
    if not _SECONDS.match(timestamp):
        return "webhook-timestamp must be whole seconds since the epoch"
    if abs(now - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
        return (
            f"webhook-timestamp is more than {WEBHOOK_TOLERANCE_SECONDS} s away from this "
            "server's clock: sign the request again when sending it"
        )
    if body is None:
        return None
    expected = sign(key, message_id=message_id, timestamp=timestamp, body=body)
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(signature.encode(), expected):
            return None
    return "webhook-signature holds no valid v1 signature of this request"


def sign(key: bytes, *, message_id: str, timestamp: str, body: bytes) -> bytes:
    """The base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``: the ``v1`` signature, unprefixed."""
    content = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
