"""The console's parts that need no server: sessions, the login limit, the audit line, the API
error's parts, the chart, the redaction of what templates print."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import Markup

from worker.console.audit import audit_line
from worker.console.chart import build_chart
from worker.console.config import console_config
from worker.console.letters import parse_api_error
from worker.console.login_limit import LoginLimiter
from worker.console.sessions import Sessions, operator_name, token_matches
from worker.console.state import ConsoleState
from worker.exceptions import ConfigurationError
from worker.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_environment")

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_sessions_expire_and_carry_their_own_csrf_token() -> None:
    now = [1000.0]
    sessions = Sessions(60, idle=60, clock=lambda: now[0])
    session = sessions.open("Alice Smith\n")
    assert session.operator == "Alice_Smith"
    assert sessions.get(session.id) == session
    assert session.csrf_matches(session.csrf_token) and not session.csrf_matches(None)
    now[0] += 61
    assert sessions.get(session.id) is None


def test_an_idle_session_expires_before_its_lifetime_ends() -> None:
    now = [1000.0]
    sessions = Sessions(3600, idle=60, clock=lambda: now[0])
    session = sessions.open("alice")
    now[0] += 50
    assert sessions.get(session.id) == replace(session, used_at=1050.0)  # in use: stays
    now[0] += 50
    assert sessions.get(session.id, touch=False) is not None  # a poll of the page keeps nothing
    now[0] += 50
    assert sessions.get(session.id) is None  # 100 s idle


def test_an_operator_can_close_every_session_of_theirs() -> None:
    sessions = Sessions(3600, idle=600)
    laptop, phone, other = sessions.open("alice"), sessions.open("alice"), sessions.open("bob")
    assert sessions.close_operator("alice") == 2
    assert sessions.get(laptop.id) is None and sessions.get(phone.id) is None
    assert sessions.get(other.id) is not None


def test_token_comparison_and_operator_names() -> None:
    assert token_matches("a" * 20, "a" * 20) and not token_matches("a" * 20, "a" * 19 + "b")
    assert operator_name("") == "operator"


def test_the_login_limit_counts_failures_per_address_in_a_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=2, max_failures_total=10, window=10, clock=lambda: now[0])
    assert limiter.reserve("a").allowed and limiter.reserve("a").allowed
    refused = limiter.reserve("a")
    assert (refused.allowed, refused.retry_after) == (False, 10)
    assert limiter.reserve("b").allowed
    now[0] = 10.5
    assert limiter.reserve("a").allowed


def test_a_login_attempt_is_reserved_before_its_token_is_checked() -> None:
    # Given attempts whose tokens are still being checked (none has failed or succeeded yet)
    limiter = LoginLimiter(max_failures=3, max_failures_total=10, window=60, clock=lambda: 0.0)
    checking = [limiter.reserve("a") for _ in range(3)]
    # Then a fourth one at the same moment is refused: the check and the count are one step
    assert all(attempt.allowed for attempt in checking)
    assert not limiter.reserve("a").allowed
    # And a success gives back its own reservation and forgives the address
    limiter.succeeded("a", checking[0])
    assert limiter.reserve("a").allowed


def test_the_login_limit_has_a_budget_for_all_addresses_together() -> None:
    # Given failures spread over many addresses, each under its own limit
    limiter = LoginLimiter(max_failures=5, max_failures_total=4, window=60, clock=lambda: 0.0)
    assert all(limiter.reserve(f"10.0.0.{n}").allowed for n in range(4))
    # Then the next address is refused too: rotating addresses does not buy more guesses
    assert not limiter.reserve("10.0.0.99").allowed


def test_a_limited_address_is_reported_once_per_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=1, max_failures_total=10, window=10, clock=lambda: now[0])
    limiter.reserve("a")
    reports = [limiter.reserve("a").first_refusal for _ in range(5)]
    assert reports == [True, False, False, False, False]
    now[0] = 10.5
    limiter.reserve("a")
    assert limiter.reserve("a").first_refusal


def test_an_audit_line_cannot_be_split_by_what_it_quotes() -> None:
    line = audit_line(operator="bob", address="10.0.0.1", action="purge", selection="a\nb", n=2)
    assert line == 'audit operator=bob from=10.0.0.1 action=purge selection="a\\nb" n=2'


def test_the_api_error_is_split_into_its_parts() -> None:
    error = parse_api_error("HTTP 400; ValidationError; Invalid.; internalIdentifier: too long, x")
    assert error is not None
    assert (error.status, error.type, error.description) == (
        "HTTP 400",
        "ValidationError",
        "Invalid.",
    )
    assert error.errors == [("internalIdentifier", "too long, x")]
    assert parse_api_error("occurredAt: Field required") is None


def test_the_chart_stacks_reasons_per_time_bucket() -> None:
    points = [
        ("api-rejected", T0),
        ("retries-exhausted", T0 + timedelta(minutes=1)),
        ("api-rejected", T0 + timedelta(hours=2)),
        ("something-else", T0 + timedelta(hours=2)),
        (None, None),
    ]
    chart = build_chart(points)
    assert chart.step == timedelta(minutes=15) and chart.peak == 2 and chart.undated == 1
    assert chart.reasons == ["api-rejected", "retries-exhausted", "other"]
    assert sum(bar.count for bar in chart.bars) == 4
    assert build_chart([]).empty


def test_redaction_covers_settings_secrets_the_console_token_and_markup() -> None:
    console_token = "console-token-for-tests-0123456789"
    settings = Settings(token="api-token-0123456789", console_token=console_token)
    state = ConsoleState.create(console_config(settings))
    try:
        printed = state.templates.finalize
        assert printed is not None
        assert printed("x api-token-0123456789 y") == "x *** y"
        assert printed(Markup(f"<b>{console_token}</b>")) == Markup("<b>***</b>")
        assert printed(3) == 3
        assert state.redaction.tree({"k": ["amqp://u:pw@h/"]}) == {"k": ["amqp://***@h/"]}
    finally:
        state.close()


@pytest.mark.parametrize(
    "token",
    [
        None,
        "too-short",
        "0123456789abcdef",  # 16 characters: 64 bits at best
        "a" * 64,  # long, but one character
        "passwordpasswordpasswordpassword",  # long, but a word repeated
    ],
)
def test_the_console_needs_a_token_hard_to_guess(token: str | None) -> None:
    with pytest.raises(ConfigurationError, match="CCSYNC_CONSOLE_TOKEN") as refused:
        console_config(Settings(console_token=token))
    if token is not None:
        assert "secrets.token_urlsafe(32)" in str(refused.value)


@pytest.mark.parametrize("token", [secrets.token_hex(32), secrets.token_urlsafe(32)])
def test_a_generated_console_token_is_accepted(token: str) -> None:
    assert console_config(Settings(console_token=token)).token == token
