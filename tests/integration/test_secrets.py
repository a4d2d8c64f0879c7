"""Issues 7 and 27: no secret leaks anywhere.

A real worker runs with recognisable secrets through everything that writes text somewhere:
applied events, 500s until retries are exhausted, a 400, a 401 storm, invalid events and an API
outage, with Sentry pointed at a local sink and metrics served. Afterwards no secret (nor any
bearer token the sandbox issued, nor the ingest and console secrets the worker holds unused) is in
the worker's log, a dead letter, the metrics or anything sent to Sentry; and Sentry got the errors,
tagged, but not the expected noise.

Then the console, with every secret the settings can hold (the ingest token and secret, the
console token, a password of two characters) quoted by a dead letter as it is, percent-encoded and
JSON-escaped: no page, API answer or export download shows one.

Then, without services: the exceptions the client raises on transport errors and token failures
carry no secret in their text, even when the failure underneath quoted one.
"""

from __future__ import annotations

import base64
import json
import re
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from tests.integration.conftest import TENANT, worker_env
from tests.integration.console_support import (
    CONSOLE_TOKEN,
    csrf_of,
    finished_job,
    log_in,
    serving,
)
from tests.integration.events import native
from tests.integration.hostile_messages import purge_all
from tests.integration.producer import Producer, connect
from tests.integration.sentry_sink import SentrySink
from tests.integration.test_dlq_support import (
    Seed,
    fresh_queues,
    seed_for_event,
    store_dead_letters,
)
from tests.integration.waiting import wait_until
from tests.support import free_port
from worker.cloudcockpit.client import Change, CloudCockpitClient, make_http_client
from worker.cloudcockpit.tokens import ClientCredentialsToken, StaticToken
from worker.console import console_config
from worker.events import correlation_id
from worker.exceptions import ApiUnavailable, TokenRejected, TokenUnavailable
from worker.processing.dead_letters import DeadLetter
from worker.sandbox import SandboxControl, SandboxOptions, SandboxServer
from worker.settings import Settings
from worker.testing import LocalWorker

CLIENT_ID = "ccsync-secrets-test"
CLIENT_SECRET = "SECRET-CLIENT-5f2a9c"
STATIC_TOKEN = "TOKEN-STATIC-77e1b0"
FINAL = ("applied", "stale", "duplicate", "dead-lettered")
#: Secrets the worker holds but never uses: none may leak either.
INGEST_TOKEN = "okmp7ed4SpPZoE3LWyBCXQQzRnvzP_slPkbIAcPeZSc"
INGEST_SECRET = "whsec_Vsq6Uot92zzrRRrXMa4i2LLW7Lye1uAoPa4rM4ME0ck="
UNUSED_SECRETS = {
    "CCSYNC_INGEST_TOKEN": INGEST_TOKEN,
    "CCSYNC_INGEST_SECRET": INGEST_SECRET,
    "CCSYNC_CONSOLE_TOKEN": CONSOLE_TOKEN,
}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_sandbox() -> Iterator[SandboxServer]:
    """A sandbox that knows only these secrets: a worker that did not use them gets nowhere."""
    options = SandboxOptions(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, static_tokens=[STATIC_TOKEN]
    )
    with SandboxServer(options) as server:
        yield server


@pytest.fixture
def control(secret_sandbox: SandboxServer) -> Iterator[SandboxControl]:
    with secret_sandbox.control() as sandbox:
        sandbox.reset()
        yield sandbox


CREDENTIALS = {
    "client credentials": {
        "CLOUDCOCKPIT_CLIENT_ID": CLIENT_ID,
        "CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET,
        "CLOUDCOCKPIT_TOKEN": "",
    },
    "static token": {
        "CLOUDCOCKPIT_CLIENT_ID": "",
        "CLOUDCOCKPIT_CLIENT_SECRET": "",
        "CLOUDCOCKPIT_TOKEN": STATIC_TOKEN,
    },
}


# --- reading what the worker did -----------------------------------------------------------


def _records(worker: LocalWorker) -> list[dict[str, Any]]:
    found = []
    for line in worker.log.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def _outcome(worker: LocalWorker, event_id: str) -> str | None:
    """The final outcome the worker logged for an event, if any yet."""
    for record in _records(worker):
        if record.get("eventId") == event_id and record.get("outcome") in FINAL:
            return str(record["outcome"])
    return None


def _wait_outcomes(worker: LocalWorker, events: list[dict[str, Any]], what: str) -> list[str]:
    def outcomes() -> list[str] | None:
        found = [_outcome(worker, event["eventId"]) for event in events]
        return None if None in found else [str(outcome) for outcome in found]

    result: list[str] = wait_until(outcomes, timeout=45, what=what)
    return result


def _publish(producer: Producer, *events: dict[str, Any]) -> None:
    for event in events:
        producer.publish(json.dumps(event).encode(), "application/json")


def _raw_dead_letters(broker_url: str) -> list[tuple[bytes, str]]:
    """Every dead letter: its body bytes and the text of all its properties and headers."""
    letters = []
    connection = connect(broker_url)
    try:
        channel = connection.Channel(connection, None, auto_decode=False)
        channel.open()
        while (message := channel.basic_get("ccsync.dead-letter", no_ack=True)) is not None:
            body = message.body if isinstance(message.body, bytes) else message.body.encode()
            letters.append((body, repr(message.properties)))
    finally:
        connection.close()
    return letters


def _issued_tokens(sandbox: SandboxControl) -> set[str]:
    """Every bearer token the worker presented to the sandbox (issued or static)."""
    tokens = set()
    for entry in sandbox.journal():
        scheme, _, token = entry["headers"].get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            tokens.add(token)
    return tokens


def _leaks(secret: str, places: dict[str, list[str | bytes]]) -> list[str]:
    found = []
    needle = secret.encode()
    for place, texts in places.items():
        for index, text in enumerate(texts):
            haystack = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
            at = haystack.find(needle)
            if at >= 0:
                context = haystack[max(0, at - 150) : at + 150]
                found.append(f"{place}[{index}]: ...{context!r}...")
    return found


# --- the run ---------------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("credentials", sorted(CREDENTIALS))
def test_given_recognisable_secrets_when_a_worker_meets_every_failure_then_no_secret_leaks(
    credentials: str,
    broker_url: str,
    redis_url: str,
    secret_sandbox: SandboxServer,
    control: SandboxControl,
    clean_queues: None,
    producer: Producer,
) -> None:
    # Given a worker with recognisable secrets, Sentry pointed at a local sink, metrics served
    metrics_port = free_port()
    with SentrySink() as sink:
        env = worker_env(
            broker_url,
            secret_sandbox.url,
            redis_url,
            CCSYNC_RETRY_DELAYS="0.2,0.2",
            CCSYNC_RETRY_JITTER="0",
            CCSYNC_LOG_FORMAT="json",
            CCSYNC_METRICS_PORT=str(metrics_port),
            SENTRY_DSN=sink.dsn,
            **CREDENTIALS[credentials],
            **UNUSED_SECRETS,
        )
        with LocalWorker(env, concurrency=4, loglevel="DEBUG") as worker:
            # When events are applied, fail until retries are exhausted, are rejected, are retried
            applied = [native() for _ in range(3)]
            _publish(producer, *applied)
            assert _wait_outcomes(worker, applied, "the first events") == ["applied"] * 3

            exhausted, rejected, retried = native(), native(), native()
            control.add_faults(exhausted["customerId"], {"status": 500, "times": 10})
            control.add_faults(rejected["customerId"], {"status": 400})
            control.add_faults(retried["customerId"], {"status": 503})
            _publish(producer, exhausted, rejected, retried)
            assert _wait_outcomes(worker, [exhausted, rejected, retried], "500s, 400, 503") == [
                "dead-lettered",
                "dead-lettered",
                "applied",
            ]

            # And a 401 storm: every issued token expired, then 401s even after a renewal
            control.expire_tokens()
            after_expiry = [native() for _ in range(4)]
            _publish(producer, *after_expiry)
            _wait_outcomes(worker, after_expiry, "events after the tokens expired")
            storm = [native() for _ in range(4)]
            for event in storm:
                control.add_faults(event["customerId"], {"status": 401, "times": 2})
            _publish(producer, *storm)
            _wait_outcomes(worker, storm, "events through a 401 storm")

            # And invalid events
            for body in (b"not JSON at all", b'{"eventId": "without-any-other-field"}'):
                producer.publish(body)

            # And an outage of the whole API, long enough to open the outage protection
            control.set_outage({"status": 503})
            during_outage = [native() for _ in range(4)]
            _publish(producer, *during_outage)
            wait_until(lambda: "outage:" in worker.log, 30, "the outage protection to open")
            control.set_outage(None)
            _wait_outcomes(worker, during_outage, "events sent during the outage")

            # (Sentry has the retries-exhausted error before the worker stops)
            def exhausted_reported() -> bool:
                return any(
                    event.get("tags", {}).get("eventId") == exhausted["eventId"]
                    for event in sink.events()
                )

            wait_until(exhausted_reported, 30, "the retries-exhausted error in Sentry")
            metrics_text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        dead_letters = _raw_dead_letters(broker_url)
        purge_all(broker_url)
        presented = _issued_tokens(control)
        token_requests = [e for e in control.journal() if e["path"].endswith("/oauth2/v2.0/token")]
        log = worker.log
        envelopes = sink.envelopes
        events = sink.events()
        sink_failures = list(sink.failures)

    levels = sorted(str(event.get("level")) for event in events)
    print(
        f"\nsecrets ({credentials}): {len(log.splitlines())} log lines, {len(dead_letters)} dead "
        f"letters, {len(metrics_text.splitlines())} metric lines, {len(envelopes)} Sentry "
        f"envelopes with {len(events)} events {levels}, {len(token_requests)} token requests, "
        f"{len(presented)} bearer tokens presented: none contains a secret"
    )

    # Then the secrets were really in use
    if credentials == "client credentials":
        assert len(token_requests) >= 2, "a token fetched at start and renewed after the 401s"
        secrets = {CLIENT_SECRET, *presented, *UNUSED_SECRETS.values()}
    else:
        assert presented == {STATIC_TOKEN}
        secrets = {STATIC_TOKEN, *UNUSED_SECRETS.values()}
    assert "ccsync_events_applied" in metrics_text
    assert len(dead_letters) >= 4, "retries-exhausted, api-rejected and two invalid events"

    # And no secret is in the log, a dead letter, the metrics or anything sent to Sentry
    places: dict[str, list[str | bytes]] = {
        "worker log": [log],
        "dead letter body": [body for body, _ in dead_letters],
        "dead letter properties": [properties for _, properties in dead_letters],
        "metrics": [metrics_text],
        "Sentry envelope": [envelope.raw for envelope in envelopes],
    }
    leaks = [leak for secret in sorted(secrets) for leak in _leaks(secret, places)]
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:20])

    # And Sentry received the errors, tagged with eventId, correlationId and tenant
    assert not sink_failures, sink_failures
    [reported] = [e for e in events if e.get("tags", {}).get("eventId") == exhausted["eventId"]]
    assert reported["tags"]["correlationId"] == str(correlation_id(TENANT, exhausted["eventId"]))
    assert reported["tags"]["tenant"] == TENANT
    assert reported["level"] == "error"

    # And no expected noise became a Sentry event: retries, api-rejected, invalid events
    assert all(event.get("level") in ("error", "fatal") for event in events), [
        (event.get("level"), _message(event)) for event in events
    ]
    noise = {event["eventId"] for event in [*applied, rejected, retried, *after_expiry, *storm]}
    tagged = [e for e in events if e.get("tags", {}).get("eventId") in noise]
    assert not tagged, [(_message(e), e.get("tags")) for e in tagged]
    assert not [e for e in events if "invalid event" in _message(e)]


# --- the console: pages, API answers and the export download ----------------------------------

#: A client secret with characters that percent-encoding and JSON escape.
ODD_CLIENT_SECRET = 'client "secret"/é-4242'
#: Shorter than any rule of thumb: still a secret.
SHORT_PASSWORD = "pw"


def _forms(secret: str) -> list[str]:
    """A secret as it is, percent-encoded and JSON-escaped."""
    return list(
        dict.fromkeys(
            [
                secret,
                quote(secret, safe=""),
                quote_plus(secret),
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
            ]
        )
    )


def _quoting_seed() -> Seed:
    """A dead letter whose body and headers quote every secret, in each of its forms."""
    long_secrets = [INGEST_TOKEN, INGEST_SECRET, CONSOLE_TOKEN, ODD_CLIENT_SECRET]
    quoted = {f"form{i}": form for i, form in enumerate(f for s in long_secrets for f in _forms(s))}
    body = json.dumps({"note": "quoting", **quoted, "password": SHORT_PASSWORD}).encode()
    headers = {
        "authorization": f"Bearer {INGEST_TOKEN}",
        "webhook-secret": INGEST_SECRET,
        "x-console": quote(CONSOLE_TOKEN),
        "x-client": json.dumps({"secret": ODD_CLIENT_SECRET}),
        "x-password": SHORT_PASSWORD,
        "x-form": f"user=ccsync&password={SHORT_PASSWORD}",
    }
    seed = seed_for_event("invalid-event")
    return Seed(
        body=body,
        content_type="application/json",
        headers=headers,
        letter=DeadLetter("invalid-event", "quoting secrets", attempts=0, event_id="quoting"),
        at=seed.at,
    )


def _short_leaks(text: str) -> list[str]:
    """Where the short password stands as a value (inside a word it is no secret's trace)."""
    pattern = rf"(?<![\w-]){re.escape(SHORT_PASSWORD)}(?![\w-])"
    return [text[max(0, m.start() - 40) : m.end() + 40] for m in re.finditer(pattern, text)]


@pytest.mark.usefixtures("clean_environment")
def test_given_every_secret_quoted_by_a_dead_letter_then_no_console_answer_or_export_shows_one(
    broker_url: str,
) -> None:
    # Given settings holding every kind of secret, a short Redis password among them
    settings = Settings(
        _env_file=None,
        broker_url=broker_url,
        redis_url=f"redis://:{SHORT_PASSWORD}@127.0.0.1:6379/15",
        client_id="console-tests",
        client_secret=ODD_CLIENT_SECRET,
        console_token=CONSOLE_TOKEN,
        ingest_token=INGEST_TOKEN,
        ingest_secret=INGEST_SECRET,
    )
    # And a dead letter quoting them all, as they are, percent-encoded and JSON-escaped
    fresh_queues(broker_url)
    store_dead_letters(broker_url, [_quoting_seed()])

    with serving(console_config(settings)) as url, httpx.Client(base_url=url) as client:
        assert log_in(client).status_code == 303
        # When the operator reads every page and exports the dead letter
        listing = client.get("/letters")
        key = re.search(r'href="/letters/([0-9a-f]+)"', listing.text)
        assert key is not None
        token = csrf_of(listing.text)
        run = client.post(
            "/actions/run",
            data={"action": "export", "limit": "1", "csrf_token": token},
            follow_redirects=False,
        )
        job = run.headers["location"]
        assert finished_job(client, job)["message"] == "exported 1 dead letter(s)"
        answers = {
            path: client.get(path)
            for path in ("/", "/letters", f"/letters/{key.group(1)}", "/api/stats", job)
        }
        download = client.get(f"{job}/download")
        fresh_queues(broker_url)

    assert download.status_code == 200
    [line] = download.text.splitlines()
    exported = json.loads(line)
    texts = {path: answer.text for path, answer in answers.items()}
    texts["export"] = download.text
    texts["export body"] = base64.b64decode(exported["body"]).decode()
    # Then no form of any secret is on a page, in an answer or in the export
    leaks = [
        f"{place}: {form!r}"
        for place, text in texts.items()
        for secret in (INGEST_TOKEN, INGEST_SECRET, CONSOLE_TOKEN, ODD_CLIENT_SECRET)
        for form in _forms(secret)
        if form in text
    ]
    leaks += [f"{place}: ...{at}..." for place, text in texts.items() for at in _short_leaks(text)]
    assert not leaks, "secrets shown:\n" + "\n".join(leaks)
    # And the detail page and the export say where they were
    assert "***" in texts[f"/letters/{key.group(1)}"]
    assert exported["headers"]["x-password"] == "***"
    assert json.loads(texts["export body"])["password"] == "***"


def _message(event: dict[str, Any]) -> str:
    entry = event.get("logentry") or {}
    return str(entry.get("formatted") or entry.get("message") or event.get("message") or "")


# --- exception texts, without services --------------------------------------------------------


def _texts(exc: BaseException) -> str:
    """Every way an exception becomes text: str, repr, args, and the traceback logging prints."""
    return "\n".join(
        [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    )


def _client(handler: Callable[[httpx.Request], httpx.Response], token: str) -> CloudCockpitClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return CloudCockpitClient(http, base_url="https://api.example.test", tokens=StaticToken(token))


def _patch(client: CloudCockpitClient) -> None:
    client.set_internal_identifier(
        Change(
            tenant=TENANT,
            customer_id=uuid.uuid4(),
            reseller_id=None,
            internal_identifier="ERP-1",
            correlation_id=uuid.uuid4(),
        )
    )


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteError],
)
def test_given_a_transport_error_quoting_the_token_then_the_raised_error_does_not(
    error: type[httpx.TransportError],
) -> None:
    # Given a transport whose error message quotes the request's Authorization header
    def fail(request: httpx.Request) -> httpx.Response:
        raise error(f"failed sending {request.headers['authorization']}", request=request)

    # When the client calls CloudCockpit through it
    with pytest.raises(ApiUnavailable) as caught:
        _patch(_client(fail, STATIC_TOKEN))

    # Then the error says what kind of failure it was, and nothing of the token
    assert error.__name__ in str(caught.value)
    assert STATIC_TOKEN not in _texts(caught.value)


def test_given_401_twice_quoting_the_token_then_token_rejected_does_not() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"description": request.headers["authorization"]})

    with pytest.raises(TokenRejected) as caught:
        _patch(_client(refuse, STATIC_TOKEN))

    assert STATIC_TOKEN not in _texts(caught.value)


def _token_source(handler: Callable[[httpx.Request], httpx.Response]) -> ClientCredentialsToken:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return ClientCredentialsToken(
        http,
        token_url="https://login.example.test/token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope="scope/.default",
    )


def _raise_quoting_form(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"could not send {request.content!r}", request=request)


def _answer_401_quoting_form(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": "invalid_client", "echo": request.content.decode()})


def _answer_garbage_quoting_form(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"access_token": None, "echo": request.content.decode()})


@pytest.mark.parametrize(
    "token_endpoint", [_raise_quoting_form, _answer_401_quoting_form, _answer_garbage_quoting_form]
)
def test_given_a_token_endpoint_failure_quoting_the_secret_then_token_unavailable_does_not(
    token_endpoint: Callable[[httpx.Request], httpx.Response],
) -> None:
    # Given a token endpoint that fails, quoting the form that carries the client secret
    source = _token_source(token_endpoint)

    # When a token is asked for
    with pytest.raises(TokenUnavailable) as caught:
        source.token()

    # Then the error says the token endpoint failed, and nothing of the secret
    assert "token endpoint" in str(caught.value)
    assert CLIENT_SECRET not in _texts(caught.value)


def test_given_a_real_refused_connection_then_the_error_has_no_secret() -> None:
    # Given the client ccsync builds, pointed at a port nobody listens on
    settings = Settings(
        _env_file=None,
        base_url=f"http://127.0.0.1:{free_port()}",
        token=STATIC_TOKEN,
        client_id=None,
        client_secret=None,
    )
    client = CloudCockpitClient(
        make_http_client(settings), base_url=settings.base_url, tokens=StaticToken(STATIC_TOKEN)
    )

    with pytest.raises(ApiUnavailable) as caught:
        _patch(client)

    assert "ConnectError" in str(caught.value)
    assert STATIC_TOKEN not in _texts(caught.value)
    assert STATIC_TOKEN not in repr(settings) and STATIC_TOKEN not in str(settings)
