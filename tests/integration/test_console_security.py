"""The console's defences, against a real broker: login, session, CSRF, rate limit, escaping of
hostile dead letters, and no secret on any page or in any API answer."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from tests.integration.console_support import (
    API_CLIENT_SECRET,
    CONSOLE_TOKEN,
    REDIS_PASSWORD,
    console_settings,
    csrf_of,
    finished_job,
    log_in,
    login_form_token,
    serving,
)
from tests.integration.test_dlq_support import (
    Seed,
    fresh_queues,
    seed_for_event,
    store_dead_letters,
    stored,
)
from worker.cli import main
from worker.console.audit import AUDIT_LOGGER
from worker.console.login_limit import MAX_FAILURES
from worker.processing.dead_letters import DeadLetter

pytestmark = pytest.mark.usefixtures("clean_environment")

SCRIPT = "<script>alert('pwned')</script>"


@pytest.fixture
def client(broker_url: str) -> Iterator[httpx.Client]:
    fresh_queues(broker_url)
    with serving(console_settings(broker_url)) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


@pytest.fixture
def logged_in(client: httpx.Client) -> httpx.Client:
    assert log_in(client).status_code == 303
    return client


def hostile_seed() -> Seed:
    """A dead letter whose body, headers and error hold markup and the settings' secrets."""
    body = json.dumps(
        {
            "eventId": f"evil-{SCRIPT}",
            "customerId": SCRIPT,
            "tenant": SCRIPT,
            "note": f"{API_CLIENT_SECRET} {CONSOLE_TOKEN} amqp://u:{REDIS_PASSWORD}@h/",
        }
    ).encode()
    return Seed(
        body=body,
        content_type="application/json",
        headers={"x-trace": SCRIPT, SCRIPT: "header name", "x-leak": API_CLIENT_SECRET},
        letter=DeadLetter(
            "invalid-event", f"eventType: {SCRIPT}", attempts=0, event_id=f"evil-{SCRIPT}"
        ),
        at=seed_for_event("invalid-event").at,
    )


def test_without_a_session_pages_send_to_login_and_the_api_answers_401(
    client: httpx.Client,
) -> None:
    # Given no session: every page leads to the login page, every API call is refused
    for path in ("/", "/letters", "/jobs", "/letters/abc", "/jobs/abc"):
        page = client.get(path, follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (303, "/login"), path
    for path in ("/api/depths", "/api/stats", "/api/jobs/abc"):
        assert client.get(path).status_code == 401, path
    # And an action without a session is refused too, CSRF token or not
    assert client.post("/actions/preview", data={"action": "purge"}).status_code == 401


def test_the_wrong_token_is_refused_and_the_right_one_opens_a_session(client: httpx.Client) -> None:
    # When an operator logs in with the wrong token
    refused = log_in(client, token="not-the-console-token-at-all")
    # Then 401, no session
    assert refused.status_code == 401
    assert "ccsync_console_session" not in refused.headers.get("set-cookie", "")
    # When with the right one
    accepted = log_in(client)
    # Then a session cookie: HttpOnly, SameSite=Strict, expiring, not Secure over plain http
    assert accepted.status_code == 303
    cookie = next(
        c for c in accepted.headers.get_list("set-cookie") if "ccsync_console_session" in c
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie
    assert client.get("/").status_code == 200


def test_over_tls_the_cookies_are_secure_and_host_only(broker_url: str) -> None:
    # Given the console behind a TLS-terminating proxy on its host, which it was told to trust
    config = console_settings(broker_url, console_trusted_proxies="127.0.0.1")
    proxied = {"X-Forwarded-Proto": "https"}
    with serving(config) as url, httpx.Client(base_url=url, headers=proxied) as client:
        form = client.get("/login")
        # Both cookies are Secure and carry the __Host- prefix (no Domain, Path=/): a client
        # speaking plain http to the proxy's back end would not send them, so this one is handed
        # over by hand
        (login_cookie,) = form.headers.get_list("set-cookie")
        assert login_cookie.startswith("__Host-ccsync_console_login=")
        assert "Secure" in login_cookie and "Path=/" in login_cookie
        value = login_cookie.split(";")[0]
        found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert found is not None
        accepted = client.post(
            "/login",
            data={"token": CONSOLE_TOKEN, "csrf_token": found.group(1)},
            headers={"Cookie": value},
            follow_redirects=False,
        )
        assert accepted.status_code == 303
        cookie = next(
            c for c in accepted.headers.get_list("set-cookie") if "ccsync_console_session" in c
        )
        assert cookie.startswith("__Host-ccsync_console_session=")
        assert "Secure" in cookie and "Path=/" in cookie
        # And the session is found under that name
        session = {"Cookie": cookie.split(";")[0]}
        assert client.get("/", headers=session, follow_redirects=False).status_code == 200


def test_a_forwarded_scheme_from_an_untrusted_peer_is_ignored(broker_url: str) -> None:
    proxied = {"X-Forwarded-Proto": "https"}
    with (
        serving(console_settings(broker_url)) as url,
        httpx.Client(base_url=url, headers=proxied) as client,
    ):
        (login_cookie,) = client.get("/login").headers.get_list("set-cookie")
    assert login_cookie.startswith("ccsync_console_login=") and "Secure" not in login_cookie


def test_a_login_without_its_form_token_is_refused(client: httpx.Client) -> None:
    login_form_token(client)
    refused = client.post("/login", data={"token": CONSOLE_TOKEN}, follow_redirects=False)
    assert refused.status_code == 403


def test_state_changing_requests_without_the_csrf_token_are_403(logged_in: httpx.Client) -> None:
    token = csrf_of(logged_in.get("/letters").text)
    for path in ("/actions/preview", "/actions/run", "/letters/abc/edit", "/letters/abc/replay"):
        # Without it, and with a wrong one
        assert logged_in.post(path, data={"action": "purge"}).status_code == 403, path
        wrong = {"action": "purge", "csrf_token": token[::-1]}
        assert logged_in.post(path, data=wrong).status_code == 403, path
    assert logged_in.post("/logout").status_code == 403
    # And with it, the request goes through
    assert logged_in.post(
        "/actions/preview", data={"action": "purge", "csrf_token": token}
    ).is_success
    header = {"X-CSRF-Token": token}
    assert logged_in.post("/actions/preview", data={"action": "replay"}, headers=header).is_success


def test_login_attempts_are_rate_limited(client: httpx.Client) -> None:
    for _ in range(MAX_FAILURES):
        assert log_in(client, token="guessing-the-console-token").status_code == 401
    # Then even the right token waits
    limited = log_in(client)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0


def test_a_hostile_dead_letter_is_shown_as_text(broker_url: str, logged_in: httpx.Client) -> None:
    # Given a dead letter with markup in its body, its headers and its error
    store_dead_letters(broker_url, [hostile_seed()])
    # When the operator opens the overview, the list and its detail
    listing = logged_in.get("/letters")
    key = re.search(r'href="/letters/([0-9a-f]+)"', listing.text)
    assert key is not None
    detail = logged_in.get(f"/letters/{key.group(1)}")
    pages = [logged_in.get("/").text, listing.text, detail.text]
    # Then the markup is text on every page, never a tag
    for page in pages:
        assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in detail.text
    assert detail.text.count("&lt;script&gt;") >= 4  # body, header name, header value, error
    # And no page may run inline script at all
    assert "script-src 'self'" in detail.headers["content-security-policy"]


def test_no_secret_appears_on_any_page_or_api_answer(
    broker_url: str, logged_in: httpx.Client
) -> None:
    # Given a dead letter quoting the settings' secrets, and a job that ran
    store_dead_letters(broker_url, [hostile_seed()])
    token = csrf_of(logged_in.get("/letters").text)
    preview = logged_in.post("/actions/preview", data={"action": "export", "csrf_token": token})
    run = logged_in.post(
        "/actions/run",
        data={"action": "export", "limit": "1", "csrf_token": token},
        follow_redirects=False,
    )
    job = run.headers["location"]
    assert finished_job(logged_in, job)["message"] == "exported 1 dead letter(s)"
    key = re.search(r'href="/letters/([0-9a-f]+)"', logged_in.get("/letters").text)
    assert key is not None
    # When every page and API answer is read
    answers = [preview.text]
    for path in (
        "/",
        "/letters",
        f"/letters/{key.group(1)}",
        "/jobs",
        job,
        "/api/depths",
        "/api/stats",
        f"/api/{job.lstrip('/')}",
        "/login",
    ):
        answer = logged_in.get(path)
        assert answer.status_code == 200, path
        answers.append(answer.text)
    # Then no secret is in any of them: not the API's, not Redis's, not the console's own token
    for text in answers:
        for secret in (API_CLIENT_SECRET, REDIS_PASSWORD, CONSOLE_TOKEN, "guest:guest"):
            assert secret not in text
    assert "***" in answers[3]  # the detail shows where they were


def test_each_action_is_one_audit_line(
    broker_url: str, logged_in: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two dead letters
    store_dead_letters(broker_url, [seed_for_event("invalid-event") for _ in range(2)])
    token = csrf_of(logged_in.get("/letters").text)
    # When the operator purges them with the typed confirmation
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        wrong = logged_in.post(
            "/actions/run",
            data={"action": "purge", "limit": "2", "confirm": "yes", "csrf_token": token},
        )
        assert wrong.status_code == 400 and len(stored()) == 2
        done = logged_in.post(
            "/actions/run",
            data={"action": "purge", "limit": "2", "confirm": "purge 2", "csrf_token": token},
            follow_redirects=False,
        )
        job = finished_job(logged_in, done.headers["location"])
    # Then they are gone, and one line says who, from where, what and how many
    assert job["message"] == "purged 2 dead letter(s)"
    assert stored() == []
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    assert lines == [
        'audit operator=alice from=127.0.0.1 action=purge selection="no filter: every dead '
        'letter (at most 2)" state=done matched=2 purged=2'
    ]


def test_the_console_refuses_to_start_without_its_token() -> None:
    result = CliRunner().invoke(main, ["console"], env={"CCSYNC_CONSOLE_TOKEN": ""})
    assert result.exit_code == 1
    assert result.output == (
        "Error: CCSYNC_CONSOLE_TOKEN is required: operators log in to the console with it\n"
    )
