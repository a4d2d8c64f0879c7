"""The one redaction: the secrets the settings hold, their forms in transit, short secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.observability.redaction import (
    MASK,
    MIN_ANYWHERE_CHARS,
    Redaction,
    mask_url_credentials,
    settings_secrets,
)
from worker.settings import Settings

TOKEN = "TOKEN-STATIC-77e1b0"
CLIENT_SECRET = "SECRET-CLIENT-5f2a9c"
INGEST_TOKEN = "okmp7ed4SpPZoE3LWyBCXQQzRnvzP_slPkbIAcPeZSc"
INGEST_SECRET = "whsec_Vsq6Uot92zzrRRrXMa4i2LLW7Lye1uAoPa4rM4ME0ck="
CONSOLE_TOKEN = "console-token-for-tests-0123456789"

pytestmark = pytest.mark.usefixtures("clean_environment")


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# --- which secrets ------------------------------------------------------------------------------


def test_given_every_secret_setting_then_each_is_a_secret() -> None:
    found = settings_secrets(
        settings(
            token=TOKEN,
            sentry_dsn="http://publickey@127.0.0.1:9/1",
            ingest_token=INGEST_TOKEN,
            ingest_secret=INGEST_SECRET,
            console_token=CONSOLE_TOKEN,
        )
    )

    assert TOKEN in found and "http://publickey@127.0.0.1:9/1" in found
    assert INGEST_TOKEN in found and CONSOLE_TOKEN in found
    # The webhook secret as configured, and its key alone
    assert INGEST_SECRET in found and INGEST_SECRET.removeprefix("whsec_") in found


def test_given_client_credentials_then_the_client_secret_is_a_secret_and_the_id_is_not() -> None:
    found = settings_secrets(settings(client_id="ccsync-client", client_secret=CLIENT_SECRET))

    assert found == [CLIENT_SECRET, "guest"]  # and the default broker URL's password


def test_given_passwords_in_the_broker_and_redis_urls_then_they_are_secrets() -> None:
    found = settings_secrets(
        settings(
            broker_url="amqp://ccsync:broker-pass-8c1f@rabbit.example:5672/prod;"
            "amqp://ccsync:second-node-pass@rabbit2.example:5672/prod",
            redis_url="redis+sentinel://:redis-pass-3d9e@s1:26379,s2:26379/main",
        )
    )

    assert sorted(found) == sorted(["broker-pass-8c1f", "second-node-pass", "redis-pass-3d9e"])


def test_given_a_password_containing_at_signs_then_all_of_it_is_a_secret() -> None:
    assert settings_secrets(settings(broker_url="amqps://ccsync:p@ss@w0rd@rabbit.example/vh")) == [
        "p@ss@w0rd"
    ]


def test_given_a_percent_encoded_url_password_then_its_decoded_form_is_a_secret_too() -> None:
    url = "amqp://ccsync:s3cret%2Fpass%40word@rabbit.example:5672/prod"

    assert "s3cret/pass@word" in settings_secrets(settings(broker_url=url))


def test_given_short_passwords_then_they_are_secrets_too() -> None:
    found = settings_secrets(
        settings(broker_url="amqp://guest:guest@localhost:5672//", redis_url="redis://:pw@h:6379")
    )

    assert found == ["guest", "pw"]


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
    assert settings_secrets(settings(token=TOKEN, broker_url=broker_url, redis_url=redis_url)) == [
        TOKEN
    ]


# --- in which forms -----------------------------------------------------------------------------

ODD_SECRET = 'p@ss/w"rd é+\\x\N{GRINNING FACE}'


@pytest.mark.parametrize(
    "form",
    [
        ODD_SECRET,
        quote(ODD_SECRET, safe=""),
        quote(ODD_SECRET, safe="").lower(),
        quote(ODD_SECRET),
        quote_plus(ODD_SECRET),
        json.dumps(ODD_SECRET)[1:-1],
        json.dumps(ODD_SECRET, ensure_ascii=False)[1:-1],
        json.dumps(ODD_SECRET)[1:-1].replace("\\u00e9", "\\u00E9"),
    ],
)
def test_given_a_secret_in_a_form_of_transit_then_it_is_masked(form: str) -> None:
    redaction = Redaction([ODD_SECRET])

    assert redaction.text(f"before {form} after") == f"before {MASK} after"


def test_given_a_secret_quoted_by_json_of_a_percent_encoded_form_then_it_is_masked() -> None:
    redaction = Redaction([ODD_SECRET])
    text = json.dumps({"form": f"a=1&secret={quote_plus(ODD_SECRET)}&b=2"})

    assert ODD_SECRET not in json.loads(redaction.text(text))["form"]
    assert json.loads(redaction.text(text))["form"] == f"a=1&secret={MASK}&b=2"


def test_given_secrets_nested_in_dicts_lists_and_tuples_then_every_occurrence_is_replaced() -> None:
    event = {
        "message": f"token {TOKEN} and again {TOKEN}",
        "extra": {
            "request": {"headers": [("Authorization", f"Bearer {TOKEN}")]},
            "form": [{"client_secret": CLIENT_SECRET}, [[f"x{CLIENT_SECRET}y"]]],
            f"key {TOKEN}": 1,
        },
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
    }

    scrubbed = Redaction([TOKEN, CLIENT_SECRET]).tree(event)

    assert scrubbed["message"] == f"token {MASK} and again {MASK}"
    assert scrubbed["extra"]["request"]["headers"] == [["Authorization", f"Bearer {MASK}"]]
    assert scrubbed["extra"]["form"] == [{"client_secret": MASK}, [[f"x{MASK}y"]]]
    assert scrubbed["extra"][f"key {MASK}"] == 1
    assert (scrubbed["count"], scrubbed["ratio"], scrubbed["flag"], scrubbed["nothing"]) == (
        3,
        0.5,
        True,
        None,
    )


def test_given_bytes_that_are_not_utf8_then_the_secret_goes_and_the_other_bytes_stay() -> None:
    data = b"\xff\xfe " + TOKEN.encode() + b" \x80 " + quote(TOKEN).encode()

    assert Redaction([TOKEN]).bytes(data) == b"\xff\xfe *** \x80 ***"


def test_given_no_secrets_then_only_url_credentials_are_masked() -> None:
    redaction = Redaction([])

    assert redaction.text("nothing to hide") == "nothing to hide"
    assert redaction.text("amqp://u:p@h/") == "amqp://***@h/"
    assert mask_url_credentials("see redis://:pw@h:6379/0 and https://h/x@y") == (
        "see redis://***@h:6379/0 and https://h/x@y"
    )


# --- the rule for short secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("guest", MASK),
        ("  guest\n", MASK),
        ("password=guest&user=guest", "password=***&user=***"),
        ('{"password": "guest"}', '{"password": "***"}'),
        ("password: guest", "password: ***"),
        ("Authorization: Bearer guest", "Authorization: Bearer ***"),
        (json.dumps({"m": 'login="guest"'}), json.dumps({"m": 'login="***"'})),
        ("password=gu%65st;", "password=***;"),
        # Inside ordinary words and sentences, a short secret is a word like any other
        ("the guest user logged in", "the guest user logged in"),
        ("guestbook", "guestbook"),
        ("password=guests", "password=guests"),
    ],
)
def test_given_a_short_secret_then_it_is_masked_where_it_stands_as_a_value(
    text: str, expected: str
) -> None:
    assert Redaction(["guest"]).text(text) == expected


def test_given_a_secret_of_one_character_then_it_is_masked_as_a_value_too() -> None:
    assert Redaction(["7"]).text("pin=7 of 17 tries") == "pin=*** of 17 tries"


def test_the_threshold_of_secrets_masked_anywhere() -> None:
    long_enough = "x" * MIN_ANYWHERE_CHARS

    assert Redaction([long_enough]).text(f"in{long_enough}side") == "in***side"
    assert (
        Redaction([long_enough[1:]]).text(f"in{long_enough[1:]}side") == f"in{long_enough[1:]}side"
    )


# --- no secret survives anywhere --------------------------------------------------------------

_secret_texts = st.text("0123456789-_ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=6, max_size=24)
_plain = st.text(max_size=20)
_encodings = st.sampled_from(
    [
        lambda s: s,
        lambda s: quote(s, safe=""),
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=True)[1:-1],
    ]
)


@st.composite
def _documents_with_secrets(draw: st.DrawFn) -> tuple[Any, list[str]]:
    secrets = draw(st.lists(_secret_texts, min_size=1, max_size=3, unique=True))
    encode = draw(_encodings)

    def salted(parts: tuple[str, bool, int, int]) -> str:
        text, plant, at, which = parts
        if not plant:
            return text
        at = min(at, len(text))
        return text[:at] + encode(secrets[which % len(secrets)]) + text[at:]

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
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


# No deadline: what is tested is what survives, not how fast, and a loaded machine is slow.
@hypothesis.settings(deadline=None)
@given(_documents_with_secrets())
def test_property_no_secret_survives_anywhere_in_a_nested_document(
    case: tuple[Any, list[str]],
) -> None:
    document, secrets = case

    scrubbed = Redaction(secrets).tree(document)

    for text in _strings(scrubbed):
        for secret in secrets:
            assert secret not in text
