"""Sentry set-up: secret values scrubbed wherever they hide, noise kept out, off without a DSN."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import EventScrubber

from worker.observability import sentry as error_reporting
from worker.observability.sentry import (
    FILTERED,
    _replace_secrets,
    _secret_values,
    init_error_reporting,
)
from worker.settings import Settings

TOKEN = "TOKEN-STATIC-77e1b0"
CLIENT_SECRET = "SECRET-CLIENT-5f2a9c"
DSN = "http://publickey@127.0.0.1:9/1"


pytestmark = pytest.mark.usefixtures("clean_environment")


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# --- _replace_secrets -------------------------------------------------------------------------


def test_given_secrets_nested_in_dicts_lists_and_tuples_then_every_occurrence_is_replaced() -> None:
    # Given an event with the secrets deep inside, several times in one string
    event = {
        "message": f"token {TOKEN} and again {TOKEN}",
        "extra": {
            "request": {"headers": [("Authorization", f"Bearer {TOKEN}")]},
            "form": [{"client_secret": CLIENT_SECRET}, [[f"x{CLIENT_SECRET}y"]]],
        },
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
    }

    # When it is scrubbed
    scrubbed = _replace_secrets(event, [TOKEN, CLIENT_SECRET])

    # Then every occurrence is [Filtered], the text around it and non-text values are kept
    assert scrubbed["message"] == f"token {FILTERED} and again {FILTERED}"
    assert scrubbed["extra"]["request"]["headers"] == [["Authorization", f"Bearer {FILTERED}"]]
    assert scrubbed["extra"]["form"] == [{"client_secret": FILTERED}, [[f"x{FILTERED}y"]]]
    assert (scrubbed["count"], scrubbed["ratio"], scrubbed["flag"], scrubbed["nothing"]) == (
        3,
        0.5,
        True,
        None,
    )
    assert TOKEN not in repr(scrubbed) and CLIENT_SECRET not in repr(scrubbed)


def test_given_no_secrets_then_the_event_is_unchanged() -> None:
    event = {"message": "nothing to hide", "tags": {"tenant": "a.example"}, "list": [1, "two"]}

    assert _replace_secrets(event, []) == event
    assert _replace_secrets(event, [TOKEN]) == event


_secret_texts = st.text("0123456789-_ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=6, max_size=24)
_plain = st.text(max_size=20)


@st.composite
def _documents_with_secrets(draw: st.DrawFn) -> tuple[Any, list[str]]:
    secrets = draw(st.lists(_secret_texts, min_size=1, max_size=3, unique=True))

    def salted(parts: tuple[str, bool, int, int]) -> str:
        # A secret planted at some place in a string, or not
        text, plant, at, which = parts
        if not plant:
            return text
        at = min(at, len(text))
        return text[:at] + secrets[which % len(secrets)] + text[at:]

    strings = st.tuples(_plain, st.booleans(), st.integers(0, 20), st.integers(0, 2)).map(salted)
    scalars = st.one_of(strings, st.integers(), st.floats(), st.booleans(), st.none())
    document = draw(
        st.recursive(
            scalars,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.tuples(inner, inner)
                | st.dictionaries(_plain, inner, max_size=4)
            ),
            max_leaves=25,
        )
    )
    return document, secrets


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


@given(_documents_with_secrets())
def test_property_no_secret_survives_anywhere_in_a_nested_event(
    case: tuple[Any, list[str]],
) -> None:
    document, secrets = case

    scrubbed = _replace_secrets(document, secrets)

    for text in _strings(scrubbed):
        for secret in secrets:
            assert secret not in text


# --- _secret_values ---------------------------------------------------------------------------


def test_given_a_static_token_then_it_is_a_secret() -> None:
    assert _secret_values(settings(token=TOKEN)) == [TOKEN]


def test_given_client_credentials_then_the_client_secret_is_a_secret_and_the_id_is_not() -> None:
    values = _secret_values(settings(client_id="ccsync-client", client_secret=CLIENT_SECRET))

    assert values == [CLIENT_SECRET]


def test_given_passwords_in_the_broker_and_redis_urls_then_they_are_secrets() -> None:
    values = _secret_values(
        settings(
            token=TOKEN,
            broker_url="amqp://ccsync:broker-pass-8c1f@rabbit.example:5672/prod",
            redis_url="redis://:redis-pass-3d9e@redis.example:6379/0",
        )
    )

    assert sorted(values) == sorted([TOKEN, "broker-pass-8c1f", "redis-pass-3d9e"])


def test_given_a_password_containing_at_signs_then_all_of_it_is_a_secret() -> None:
    values = _secret_values(settings(broker_url="amqps://ccsync:p@ss@w0rd@rabbit.example/vh"))

    assert values == ["p@ss@w0rd"]


def test_given_a_percent_encoded_url_password_then_its_decoded_form_is_a_secret_too() -> None:
    # Given a password with characters a URL must escape: the client libraries use it decoded
    url = "amqp://ccsync:s3cret%2Fpass%40word@rabbit.example:5672/prod"

    values = _secret_values(settings(broker_url=url))

    # Then the value that could appear in an error (the decoded one) is scrubbed as well
    assert "s3cret/pass@word" in values


def test_given_values_shorter_than_six_characters_then_they_are_ignored() -> None:
    # Given a short token and the well-known short broker password "guest"
    values = _secret_values(
        settings(
            token="abc12",
            broker_url="amqp://guest:guest@localhost:5672//",
            redis_url="redis://:pw@localhost:6379/0",
        )
    )

    # Then none of them is scrubbed: replacing "guest" everywhere would mangle ordinary text
    assert values == []


def test_given_six_characters_then_it_is_long_enough() -> None:
    assert _secret_values(settings(token="abc123")) == ["abc123"]


@pytest.mark.parametrize(
    ("broker_url", "redis_url"),
    [
        ("amqp://localhost:5672//", "redis://localhost:6379/0"),
        ("amqp://user@localhost:5672//", "redis://user@localhost:6379/0"),
        ("amqp://user:@localhost:5672//", "redis://user:@localhost:6379/0"),
    ],
)
def test_given_urls_without_a_password_then_no_secret_comes_from_them(
    broker_url: str, redis_url: str
) -> None:
    found = _secret_values(settings(token=TOKEN, broker_url=broker_url, redis_url=redis_url))
    assert found == [TOKEN]


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
