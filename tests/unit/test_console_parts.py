"""The console's parts that need no server: sessions, the login limit, the audit line, the API
error's parts, the chart, the redaction of what templates print."""

from __future__ import annotations

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
    sessions = Sessions(60, clock=lambda: now[0])
    session = sessions.open("Alice Smith\n")
    assert session.operator == "Alice_Smith"
    assert sessions.get(session.id) == session
    assert session.csrf_matches(session.csrf_token) and not session.csrf_matches(None)
    now[0] += 61
    assert sessions.get(session.id) is None


def test_token_comparison_and_operator_names() -> None:
    assert token_matches("a" * 20, "a" * 20) and not token_matches("a" * 20, "a" * 19 + "b")
    assert operator_name("") == "operator"


def test_the_login_limit_counts_failures_per_address_in_a_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=2, window=10, clock=lambda: now[0])
    limiter.failed("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 10 and limiter.retry_after("b") == 0
    now[0] = 10.5
    assert limiter.retry_after("a") == 0


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


@pytest.mark.parametrize("token", [None, "too-short"])
def test_the_console_needs_a_long_enough_token(token: str | None) -> None:
    with pytest.raises(ConfigurationError, match="CCSYNC_CONSOLE_TOKEN"):
        console_config(Settings(console_token=token))
