"""Sentry set-up: secret values scrubbed wherever they hide, noise kept out, off without a DSN.

The redaction itself is tested in ``test_redaction``; here, that Sentry's events pass through it."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import pytest
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import EventScrubber

from worker.observability import sentry as error_reporting
from worker.observability.sentry import init_error_reporting
from worker.settings import Settings

TOKEN = "TOKEN-STATIC-77e1b0"
CLIENT_SECRET = "SECRET-CLIENT-5f2a9c"
DSN = "http://publickey@127.0.0.1:9/1"


pytestmark = pytest.mark.usefixtures("clean_environment")


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# --- init_error_reporting ----------------------------------------------------------------------


@pytest.fixture
def sentry_options(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What init_error_reporting passes to sentry_sdk.init, captured instead of starting Sentry."""
    captured: dict[str, Any] = {}

    def fake_init(**options: Any) -> None:
        captured.update(options or {"called": True})

    monkeypatch.setattr(error_reporting.sentry_sdk, "init", fake_init)
    return captured


def test_given_no_dsn_then_sentry_stays_off(sentry_options: dict[str, Any]) -> None:
    # Given settings without SENTRY_DSN
    # When error reporting is initialised
    started = init_error_reporting(settings(token=TOKEN))

    # Then it says it did not start, and Sentry was never initialised
    assert started is False
    assert sentry_options == {}


def test_given_a_dsn_then_sentry_starts_with_the_celery_and_logging_integrations(
    sentry_options: dict[str, Any],
) -> None:
    started = init_error_reporting(settings(token=TOKEN, sentry_dsn=DSN))

    assert started is True
    assert sentry_options["dsn"] == DSN
    assert sentry_options["send_default_pii"] is False
    assert sentry_options["include_local_variables"] is False
    kinds = {type(integration) for integration in sentry_options["integrations"]}
    assert {CeleryIntegration, LoggingIntegration} <= kinds


def test_given_a_dsn_then_only_error_logs_become_events(sentry_options: dict[str, Any]) -> None:
    # Retries (INFO) and api-rejected (WARNING) are breadcrumbs at most, never events
    init_error_reporting(settings(token=TOKEN, sentry_dsn=DSN))

    [logging_integration] = [
        integration
        for integration in sentry_options["integrations"]
        if isinstance(integration, LoggingIntegration)
    ]
    assert logging_integration._handler is not None
    assert logging_integration._handler.level == logging.ERROR


def test_given_a_dsn_then_events_and_breadcrumbs_are_scrubbed_of_the_secrets(
    sentry_options: dict[str, Any],
) -> None:
    # Given Sentry started with a client secret and a broker password
    init_error_reporting(
        settings(
            client_id="ccsync-client",
            client_secret=CLIENT_SECRET,
            broker_url="amqp://ccsync:broker-pass-8c1f@rabbit.example/prod",
            sentry_dsn=DSN,
        )
    )
    event = {
        "logentry": {"message": f"token endpoint said {CLIENT_SECRET}"},
        "exception": {"values": [{"value": "amqp://ccsync:broker-pass-8c1f@rabbit.example"}]},
    }
    crumb = {"message": "retry", "data": {"form": f"client_secret={CLIENT_SECRET}"}}

    # When an event and a breadcrumb go out
    sent = sentry_options["before_send"](event, {})
    kept = sentry_options["before_breadcrumb"](crumb, {})

    # Then neither carries a secret
    for text in (repr(sent), repr(kept)):
        assert CLIENT_SECRET not in text
        assert "broker-pass-8c1f" not in text


def test_given_a_dsn_then_the_key_scrubber_is_recursive_and_knows_authorization(
    sentry_options: dict[str, Any],
) -> None:
    # Given the scrubber Sentry is started with
    init_error_reporting(settings(token=TOKEN, sentry_dsn=DSN))
    scrubber: EventScrubber = sentry_options["event_scrubber"]

    # When it meets an Authorization header nested in a stack frame's variables
    event: dict[str, Any] = {
        "exception": {
            "values": [
                {
                    "stacktrace": {
                        "frames": [
                            {"vars": {"request": {"headers": {"Authorization": "Bearer abc"}}}}
                        ]
                    }
                }
            ]
        },
        "extra": {"nested": {"client_secret": "xyz", "access_token": "abc"}},
    }
    scrubber.scrub_event(event)

    # Then the values are gone, however deep they were
    assert scrubber.recursive is True
    assert "Bearer abc" not in repr(event)
    assert "'xyz'" not in repr(event) and "'abc'" not in repr(event)


def test_given_a_dsn_then_every_setting_secret_in_every_form_is_scrubbed_short_ones_too(
    sentry_options: dict[str, Any],
) -> None:
    # Given Sentry started with the ingest token and secret, the console token, a short password
    ingest_token = "okmp7ed4SpPZoE3LWyBCXQQzRnvzP_slPkbIAcPeZSc"
    ingest_secret = "whsec_Vsq6Uot92zzrRRrXMa4i2LLW7Lye1uAoPa4rM4ME0ck="
    console_token = 'console "token"/é-0123456789'
    init_error_reporting(
        settings(
            token=TOKEN,
            sentry_dsn=DSN,
            ingest_token=ingest_token,
            ingest_secret=ingest_secret,
            console_token=console_token,
            redis_url="redis://:pw@redis.example:6379/0",
        )
    )
    # When an event quotes them: as they are, percent-encoded, JSON-escaped, as a field's value
    event = {
        "message": f"Bearer {ingest_token} and {ingest_secret}",
        "extra": {
            "form": f"a=1&console={quote(console_token, safe='')}&password=pw",
            "json": json.dumps({"token": console_token, "secret": quote(ingest_secret)}),
            "password": "pw",
        },
    }
    sent = repr(sentry_options["before_send"](event, {}))

    # Then none of them leaves, in any form
    for secret in (ingest_token, ingest_secret, console_token):
        for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1]):
            assert form not in sent
    assert "password=pw" not in sent and "'pw'" not in sent
