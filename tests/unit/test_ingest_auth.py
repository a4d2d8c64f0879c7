"""``ccsync ingest`` authentication: bearer token and Standard Webhooks signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest
from starlette.datastructures import Headers

from worker.exceptions import ConfigurationError
from worker.ingest.authentication import (
    Credentials,
    Unauthenticated,
    authenticate,
    authenticate_headers,
)
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.usefixtures("clean_environment")

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_800_000_000
BODY = b'{"eventId":"e-1"}'
TOKEN = secrets.token_urlsafe(32)


def _signature(body: bytes, *, message_id: str = "m-1", timestamp: int = NOW) -> str:
    content = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(KEY, content, hashlib.sha256).digest()).decode()


def _credentials(**values: str) -> Credentials:
    return Credentials.from_settings(Settings.model_validate(values))


def _signed(signature: str, *, timestamp: int = NOW) -> Headers:
    return Headers(
        {"webhook-id": "m-1", "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    )


def test_given_the_signature_of_the_spec_then_accepted_also_among_other_signatures() -> None:
    credentials = _credentials(CCSYNC_INGEST_SECRET=SECRET)

    authenticate(credentials, _signed(f"v1,{_signature(BODY)}"), BODY, now=NOW)
    authenticate(credentials, _signed(f"v1,bm9wZQ== v1,{_signature(BODY)}"), BODY, now=NOW + 1)


@pytest.mark.parametrize("skew", [-301, 301])
def test_given_a_timestamp_over_five_minutes_off_either_way_then_refused(skew: int) -> None:
    credentials = _credentials(CCSYNC_INGEST_SECRET=SECRET)
    signature = _signature(BODY, timestamp=NOW + skew)

    with pytest.raises(Unauthenticated, match="webhook-timestamp is more than 300 s"):
        authenticate(credentials, _signed(f"v1,{signature}", timestamp=NOW + skew), BODY, now=NOW)


def test_given_a_timestamp_five_minutes_off_then_still_accepted() -> None:
    credentials = _credentials(CCSYNC_INGEST_SECRET=SECRET)
    signature = _signature(BODY, timestamp=NOW - 300)

    authenticate(credentials, _signed(f"v1,{signature}", timestamp=NOW - 300), BODY, now=NOW)


@pytest.mark.parametrize(
    "signature",
    [lambda: _signature(BODY + b" "), lambda: "v2," + _signature(BODY), lambda: ""],
    ids=["another body", "another version", "empty"],
)
def test_given_a_signature_not_of_this_request_then_refused(signature: object) -> None:
    credentials = _credentials(CCSYNC_INGEST_SECRET=SECRET)
    value = signature()  # type: ignore[operator]
    header = value if value.startswith("v2,") or not value else f"v1,{value}"

    with pytest.raises(Unauthenticated):
        authenticate(credentials, _signed(header), BODY, now=NOW)


def test_given_the_bearer_token_then_accepted_and_another_refused() -> None:
    credentials = _credentials(CCSYNC_INGEST_TOKEN=TOKEN)

    authenticate(credentials, Headers({"authorization": f"Bearer {TOKEN}"}), BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="bearer token is not valid"):
        authenticate(credentials, Headers({"authorization": f"Bearer {TOKEN[:-1]}"}), BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="must be 'Bearer <token>'"):
        authenticate(credentials, Headers({"authorization": "Basic dDA="}), BODY, now=NOW)


def test_given_only_a_token_configured_then_a_signed_request_is_refused_and_told_why() -> None:
    credentials = _credentials(CCSYNC_INGEST_TOKEN=TOKEN)

    with pytest.raises(Unauthenticated, match="signatures are not accepted here"):
        authenticate(credentials, _signed(f"v1,{_signature(BODY)}"), BODY, now=NOW)


def test_given_no_credential_offered_then_refused_naming_both_ways() -> None:
    credentials = _credentials(CCSYNC_INGEST_TOKEN=TOKEN, CCSYNC_INGEST_SECRET=SECRET)

    with pytest.raises(Unauthenticated, match=r"no credentials.*Bearer.*webhook-signature"):
        authenticate(credentials, Headers({}), BODY, now=NOW)


def test_given_neither_setting_then_ingest_credentials_are_required_in_one_line() -> None:
    with pytest.raises(ConfigurationError, match="CCSYNC_INGEST_TOKEN or CCSYNC_INGEST_SECRET"):
        load_settings().require_ingest_credentials()


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("c2VjcmV0", "must be whsec_ followed by base64"),
        ("whsec_!!!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 24 bytes"),
    ],
)
def test_given_a_malformed_secret_then_configuration_error_naming_it_not_quoting_it(
    monkeypatch: pytest.MonkeyPatch, secret: str, reason: str
) -> None:
    monkeypatch.setenv("CCSYNC_INGEST_SECRET", secret)

    with pytest.raises(ConfigurationError, match=f"^CCSYNC_INGEST_SECRET: .*{reason}") as error:
        load_settings()
    assert secret not in str(error.value)


def test_given_ingest_secrets_then_the_settings_repr_never_shows_them() -> None:
    settings = Settings.model_validate(
        {"CCSYNC_INGEST_TOKEN": TOKEN, "CCSYNC_INGEST_SECRET": SECRET}
    )

    assert TOKEN not in repr(settings)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    "weak",
    [
        "t0ken",
        "ingest-test-token-" + "x" * 16,
        "password" * 4,
        "a" * 64,
        "correct horse battery staple 2024",
    ],
    ids=["short", "padded", "repeated", "one-character", "passphrase"],
)
def test_given_a_weak_ingest_token_then_configuration_error_saying_how_to_make_one(
    monkeypatch: pytest.MonkeyPatch, weak: str
) -> None:
    monkeypatch.setenv("CCSYNC_INGEST_TOKEN", weak)

    with pytest.raises(ConfigurationError, match=r"^CCSYNC_INGEST_TOKEN: too weak") as error:
        load_settings()
    assert "secrets.token_urlsafe(32)" in str(error.value)
    assert weak not in str(error.value)


def test_given_tokens_made_as_the_error_says_then_every_one_is_accepted() -> None:
    for _ in range(1000):
        token = secrets.token_urlsafe(32)
        assert Settings.model_validate({"CCSYNC_INGEST_TOKEN": token}).ingest_token is not None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no credentials"),
        ({"authorization": "Bearer t0ke"}, "bearer token is not valid"),
        ({"webhook-id": "m-1", "webhook-signature": "v1,x"}, "needs all of webhook-id"),
        (
            {"webhook-id": "m-1", "webhook-timestamp": str(NOW - 301), "webhook-signature": "v1,x"},
            "more than 300 s away",
        ),
    ],
    ids=["none", "wrong token", "incomplete signature", "stale signature"],
)
def test_given_headers_that_no_body_could_make_valid_then_refused_before_the_body(
    headers: dict[str, str], reason: str
) -> None:
    credentials = _credentials(CCSYNC_INGEST_TOKEN=TOKEN, CCSYNC_INGEST_SECRET=SECRET)

    with pytest.raises(Unauthenticated, match=reason):
        authenticate_headers(credentials, Headers(headers), now=NOW)


def test_given_the_token_or_signature_headers_then_the_body_may_be_read() -> None:
    credentials = _credentials(CCSYNC_INGEST_TOKEN=TOKEN, CCSYNC_INGEST_SECRET=SECRET)

    authenticate_headers(credentials, Headers({"authorization": f"Bearer {TOKEN}"}), now=NOW)
    # Whether the signature is of the body is known once the body is read
    authenticate_headers(credentials, _signed("v1,bm9wZQ=="), now=NOW)
