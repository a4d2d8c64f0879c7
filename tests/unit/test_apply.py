"""One attempt without a broker: ``Applier`` over a real client (MockTransport) and real Redis."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from worker.apply import Applier, Attempt, Outcome
from worker.backoff import RetryPolicy
from worker.client import CloudCockpitClient, make_http_client, make_token_source
from worker.constants import DELIVERY_LIMIT
from worker.dead_letters import DeadLetter, Envelope
from worker.events import correlation_id, decode_event
from worker.ledger import Ledger
from worker.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/15"


def fresh_ledger() -> Ledger:
    """A ledger of its own in the real Redis: no test sees another's applied events."""
    return Ledger.from_url(REDIS_URL, prefix=f"ccsync-test-{uuid.uuid4().hex}")


BASE_URL = "https://cc.example.test"
TENANT = "portal.example.com"
CUSTOMER = "3f0e6f43-3b0d-4b1c-9a56-0a7a2b1c1d11"
RESELLER = "9c1d2e3f-4a5b-4c6d-8e7f-901234567890"
FIRST_ATTEMPT_AT = "2024-05-01T12:00:00+00:00"
BODY = json.dumps(
    {
        "eventId": "evt-42",
        "eventType": "customer.internal-identifier.changed",
        "occurredAt": "2024-05-01T11:59:00Z",
        "tenant": TENANT,
        "customerId": CUSTOMER,
        "resellerId": RESELLER,
        "internalIdentifier": "CRM-0042",
        "source": "crm",
    }
).encode("utf-8")
ENVELOPE = Envelope(
    body=BODY, content_type="application/json", content_encoding=None, headers={"x-producer": "crm"}
)
EXPECTED_CORRELATION = str(correlation_id(TENANT, "evt-42"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("CCSYNC_", "CLOUDCOCKPIT_")) or name == "SENTRY_DSN":
            monkeypatch.delenv(name)
    yield


@dataclass
class RecordingPublisher:
    """Our own Publisher interface, recording what ``apply_event`` hands on."""

    retries: list[tuple[Attempt, float]] = field(default_factory=list)
    dead_letters: list[tuple[Envelope, DeadLetter]] = field(default_factory=list)

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None:
        self.retries.append((attempt, delay_seconds))

    def dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None:
        self.dead_letters.append((envelope, letter))


class FakeApi:
    """A MockTransport handler answering every PATCH with ``respond`` and recording it."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def status(code: int, **body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, json=body or None)


def client_for(api: FakeApi) -> CloudCockpitClient:
    settings = Settings(CLOUDCOCKPIT_BASE_URL=BASE_URL, CLOUDCOCKPIT_TOKEN="static-tok")
    http = make_http_client(settings, transport=httpx.MockTransport(api))
    return CloudCockpitClient(http, settings.base_url, make_token_source(settings, http))


def attempt(number: int = 1) -> Attempt:
    event = decode_event(ENVELOPE.body, ENVELOPE.content_type, ENVELOPE.headers)
    return Attempt(event, ENVELOPE, number, FIRST_ATTEMPT_AT)


def run(
    api: FakeApi,
    number: int = 1,
    delays: tuple[float, ...] = (1.0, 2.0, 3.0),
    delivery_count: int = 0,
) -> tuple[Outcome, RecordingPublisher]:
    publisher = RecordingPublisher()
    applier = Applier(
        client_for(api),
        fresh_ledger(),
        publisher,
        RetryPolicy(delays, jitter=0.2),
        rng=random.Random(1234),
    )
    return applier.apply(attempt(number), delivery_count=delivery_count), publisher


# --- applied ---------------------------------------------------------------------------------


def test_given_204_then_applied_and_nothing_is_published() -> None:
    api = FakeApi(status(204))

    outcome, publisher = run(api)

    assert outcome is Outcome.APPLIED
    assert publisher.retries == []
    assert publisher.dead_letters == []
    (request,) = api.requests
    assert request.url.path == f"/v1/Customers/{CUSTOMER}/internal-identifier"
    assert json.loads(request.content) == {"internalIdentifier": "CRM-0042", "resellerId": RESELLER}


# --- rejected --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 403, 404])
def test_given_a_rejection_then_dead_lettered_as_api_rejected_with_everything_an_operator_needs(
    code: int,
) -> None:
    api = FakeApi(status(code, type="NotFound", description="No such customer."))

    outcome, publisher = run(api, number=2)

    assert outcome is Outcome.DEAD_LETTERED
    assert publisher.retries == []
    ((envelope, letter),) = publisher.dead_letters
    assert envelope == ENVELOPE
    assert envelope.body == BODY
    assert letter.reason == "api-rejected"
    assert letter.status == code
    assert f"HTTP {code}" in letter.error
    assert "No such customer." in letter.error
    assert letter.attempts == 2
    assert letter.event_id == "evt-42"
    assert letter.correlation_id == EXPECTED_CORRELATION
    assert letter.first_attempt_at == FIRST_ATTEMPT_AT
    assert len(api.requests) == 1


# --- transient failures ----------------------------------------------------------------------


def test_given_500_on_attempt_1_then_retrying_with_attempt_2_after_the_first_delay() -> None:
    outcome, publisher = run(FakeApi(status(500)), number=1, delays=(1.0, 2.0, 3.0))

    assert outcome is Outcome.RETRYING
    assert publisher.dead_letters == []
    ((next_attempt, delay),) = publisher.retries
    assert next_attempt.number == 2
    assert 1.0 <= delay <= 1.2
    assert next_attempt.event == attempt().event
    assert next_attempt.envelope == ENVELOPE
    assert next_attempt.first_attempt_at == FIRST_ATTEMPT_AT


@pytest.mark.parametrize(("number", "low", "high"), [(2, 2.0, 2.4), (3, 3.0, 3.6)])
def test_given_500_on_a_middle_attempt_then_the_matching_delay_is_used(
    number: int, low: float, high: float
) -> None:
    _, publisher = run(FakeApi(status(500)), number=number)

    ((next_attempt, delay),) = publisher.retries
    assert next_attempt.number == number + 1
    assert low <= delay <= high


def test_given_500_on_attempt_4_of_three_delays_then_dead_lettered_retries_exhausted() -> None:
    api = FakeApi(status(500, type="Internal", description="Database timeout."))

    outcome, publisher = run(api, number=4, delays=(1.0, 2.0, 3.0))

    assert outcome is Outcome.DEAD_LETTERED
    assert publisher.retries == []
    ((envelope, letter),) = publisher.dead_letters
    assert envelope == ENVELOPE
    assert letter.reason == "retries-exhausted"
    assert letter.attempts == 4
    assert letter.status == 500
    assert "Database timeout." in letter.error
    assert letter.correlation_id == EXPECTED_CORRELATION


def test_given_no_answer_on_the_last_attempt_then_retries_exhausted_without_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    outcome, publisher = run(FakeApi(refuse), number=2, delays=(1.0,))

    assert outcome is Outcome.DEAD_LETTERED
    ((_, letter),) = publisher.dead_letters
    assert letter.reason == "retries-exhausted"
    assert letter.status is None
    assert "ConnectError" in letter.error


def test_given_429_with_retry_after_5_and_a_1_s_policy_then_the_retry_waits_at_least_5_s() -> None:
    api = FakeApi(lambda request: httpx.Response(429, headers={"Retry-After": "5"}))

    outcome, publisher = run(api, number=1, delays=(1.0,))

    assert outcome is Outcome.RETRYING
    ((next_attempt, delay),) = publisher.retries
    assert next_attempt.number == 2
    assert delay >= 5.0


def test_given_401_twice_then_the_event_is_retried_not_dead_lettered() -> None:
    api = FakeApi(status(401))

    outcome, publisher = run(api, number=1)

    assert outcome is Outcome.RETRYING
    assert publisher.dead_letters == []
    assert len(api.requests) == 2


# --- delivery limit --------------------------------------------------------------------------


@pytest.mark.parametrize("delivery_count", [DELIVERY_LIMIT, DELIVERY_LIMIT + 3])
def test_given_the_delivery_limit_reached_then_dead_lettered_without_calling_the_api(
    delivery_count: int,
) -> None:
    api = FakeApi(status(204))

    outcome, publisher = run(api, number=3, delivery_count=delivery_count)

    assert outcome is Outcome.DEAD_LETTERED
    assert api.requests == []
    ((envelope, letter),) = publisher.dead_letters
    assert envelope == ENVELOPE
    assert letter.reason == "delivery-limit"
    assert letter.status is None
    assert letter.attempts == 3
    assert letter.event_id == "evt-42"
    assert letter.correlation_id == EXPECTED_CORRELATION
    assert str(delivery_count) in letter.error


def test_given_one_delivery_below_the_limit_then_the_api_is_called() -> None:
    api = FakeApi(status(204))

    outcome, _ = run(api, delivery_count=DELIVERY_LIMIT - 1)

    assert outcome is Outcome.APPLIED
    assert len(api.requests) == 1


# --- one event, one correlation id -----------------------------------------------------------


def test_the_correlation_id_is_identical_across_attempts_1_to_4_of_one_event() -> None:
    """Each next attempt travels as task kwargs (JSON), as it does through the broker."""
    api = FakeApi(status(503))
    client = client_for(api)
    policy = RetryPolicy((1.0, 2.0, 3.0), jitter=0.2)
    ledger = fresh_ledger()
    current = attempt(1)
    outcomes = []

    for _ in range(4):
        publisher = RecordingPublisher()
        applier = Applier(client, ledger, publisher, policy, rng=random.Random(5))
        outcomes.append(applier.apply(current))
        if publisher.retries:
            ((next_attempt, _),) = publisher.retries
            current = Attempt.from_task_kwargs(
                **json.loads(json.dumps(next_attempt.to_task_kwargs()))
            )

    assert outcomes == [Outcome.RETRYING] * 3 + [Outcome.DEAD_LETTERED]
    assert current.number == 4
    sent = [request.headers["x-correlation-id"] for request in api.requests]
    assert len(sent) == 4
    assert set(sent) == {EXPECTED_CORRELATION}
    assert uuid.UUID(sent[0]).version == 5
    ((_, letter),) = publisher.dead_letters
    assert letter.correlation_id == EXPECTED_CORRELATION
    assert letter.attempts == 4
    assert letter.first_attempt_at == FIRST_ATTEMPT_AT
