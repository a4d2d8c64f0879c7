"""One attempt without a broker: ``Applier`` over a real client (MockTransport) and real Redis."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.unit.redis_ledgers import fresh_ledger, unreachable_ledger
from worker.cloudcockpit.client import CloudCockpitClient, make_http_client, make_token_source
from worker.constants import DELIVERY_LIMIT
from worker.events import correlation_id, decode_event
from worker.exceptions import RelationshipBusy
from worker.processing.applier import Applier, Outcome
from worker.processing.attempts import Attempt
from worker.processing.backoff import RetryPolicy
from worker.processing.dead_letters import DeadLetter, Envelope
from worker.processing.ledger import Ledger, Relationship, Verdict
from worker.processing.outage import OutageGuard, OutagePolicy
from worker.settings import Settings

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


pytestmark = pytest.mark.usefixtures("clean_environment")


@dataclass
class RecordingForwarder:
    """Our own Forwarder interface, recording what ``apply_event`` hands on."""

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
    return CloudCockpitClient(
        http, base_url=settings.base_url, tokens=make_token_source(settings, http)
    )


def attempt(number: int = 1) -> Attempt:
    event = decode_event(ENVELOPE.body, ENVELOPE.content_type, ENVELOPE.headers)
    return Attempt(event, ENVELOPE, number, FIRST_ATTEMPT_AT)


def run(
    api: FakeApi,
    number: int = 1,
    delays: tuple[float, ...] = (1.0, 2.0, 3.0),
    delivery_count: int = 0,
) -> tuple[Outcome, RecordingForwarder]:
    forwarder = RecordingForwarder()
    applier = Applier(
        api=client_for(api),
        ledger=fresh_ledger(),
        forwarder=forwarder,
        policy=RetryPolicy(delays, jitter=0.2),
        rng=random.Random(1234),
    )
    return applier.apply(attempt(number), delivery_count=delivery_count), forwarder


# --- applied ---------------------------------------------------------------------------------


def test_given_204_then_applied_and_nothing_is_published() -> None:
    api = FakeApi(status(204))

    outcome, forwarder = run(api)

    assert outcome is Outcome.APPLIED
    assert forwarder.retries == []
    assert forwarder.dead_letters == []
    (request,) = api.requests
    assert request.url.path == f"/v1/Customers/{CUSTOMER}/internal-identifier"
    assert json.loads(request.content) == {"internalIdentifier": "CRM-0042", "resellerId": RESELLER}


# --- rejected --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 403, 404])
def test_given_a_rejection_then_dead_lettered_as_api_rejected_with_everything_an_operator_needs(
    code: int,
) -> None:
    api = FakeApi(status(code, type="NotFound", description="No such customer."))

    outcome, forwarder = run(api, number=2)

    assert outcome is Outcome.DEAD_LETTERED
    assert forwarder.retries == []
    ((envelope, letter),) = forwarder.dead_letters
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
    outcome, forwarder = run(FakeApi(status(500)), number=1, delays=(1.0, 2.0, 3.0))

    assert outcome is Outcome.RETRYING
    assert forwarder.dead_letters == []
    ((next_attempt, delay),) = forwarder.retries
    assert next_attempt.number == 2
    assert 1.0 <= delay <= 1.2
    assert next_attempt.event == attempt().event
    assert next_attempt.envelope == ENVELOPE
    assert next_attempt.first_attempt_at == FIRST_ATTEMPT_AT


@pytest.mark.parametrize(("number", "low", "high"), [(2, 2.0, 2.4), (3, 3.0, 3.6)])
def test_given_500_on_a_middle_attempt_then_the_matching_delay_is_used(
    number: int, low: float, high: float
) -> None:
    _, forwarder = run(FakeApi(status(500)), number=number)

    ((next_attempt, delay),) = forwarder.retries
    assert next_attempt.number == number + 1
    assert low <= delay <= high


def test_given_500_on_attempt_4_of_three_delays_then_dead_lettered_retries_exhausted() -> None:
    api = FakeApi(status(500, type="Internal", description="Database timeout."))

    outcome, forwarder = run(api, number=4, delays=(1.0, 2.0, 3.0))

    assert outcome is Outcome.DEAD_LETTERED
    assert forwarder.retries == []
    ((envelope, letter),) = forwarder.dead_letters
    assert envelope == ENVELOPE
    assert letter.reason == "retries-exhausted"
    assert letter.attempts == 4
    assert letter.status == 500
    assert "Database timeout." in letter.error
    assert letter.correlation_id == EXPECTED_CORRELATION


def test_given_no_answer_on_the_last_attempt_then_retries_exhausted_without_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    outcome, forwarder = run(FakeApi(refuse), number=2, delays=(1.0,))

    assert outcome is Outcome.DEAD_LETTERED
    ((_, letter),) = forwarder.dead_letters
    assert letter.reason == "retries-exhausted"
    assert letter.status is None
    assert "ConnectError" in letter.error


def test_given_429_with_retry_after_5_then_deferred_at_least_5_s_without_spending_the_attempt() -> (
    None
):
    api = FakeApi(lambda request: httpx.Response(429, headers={"Retry-After": "5"}))

    outcome, forwarder = run(api, number=1, delays=(1.0,))

    assert outcome is Outcome.DEFERRED
    ((again, delay),) = forwarder.retries
    assert again.number == 1
    assert delay >= 5.0


def test_given_429_on_the_last_attempt_then_deferred_never_dead_lettered() -> None:
    api = FakeApi(lambda request: httpx.Response(429))

    outcome, forwarder = run(api, number=4, delays=(1.0, 2.0, 3.0))

    assert outcome is Outcome.DEFERRED
    assert forwarder.dead_letters == []
    ((again, delay),) = forwarder.retries
    assert again.number == 4
    assert delay >= 1.0


def test_given_401_twice_then_the_event_is_retried_not_dead_lettered() -> None:
    api = FakeApi(status(401))

    outcome, forwarder = run(api, number=1)

    assert outcome is Outcome.RETRYING
    assert forwarder.dead_letters == []
    assert len(api.requests) == 2


# --- delivery limit --------------------------------------------------------------------------


@pytest.mark.parametrize("delivery_count", [DELIVERY_LIMIT, DELIVERY_LIMIT + 3])
def test_given_the_delivery_limit_reached_then_dead_lettered_without_calling_the_api(
    delivery_count: int,
) -> None:
    api = FakeApi(status(204))

    outcome, forwarder = run(api, number=3, delivery_count=delivery_count)

    assert outcome is Outcome.DEAD_LETTERED
    assert api.requests == []
    ((envelope, letter),) = forwarder.dead_letters
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
        forwarder = RecordingForwarder()
        applier = Applier(
            api=client, ledger=ledger, forwarder=forwarder, policy=policy, rng=random.Random(5)
        )
        outcomes.append(applier.apply(current))
        if forwarder.retries:
            ((next_attempt, _),) = forwarder.retries
            current = Attempt.from_task_kwargs(
                **json.loads(json.dumps(next_attempt.to_task_kwargs()))
            )

    assert outcomes == [Outcome.RETRYING] * 3 + [Outcome.DEAD_LETTERED]
    assert current.number == 4
    sent = [request.headers["x-correlation-id"] for request in api.requests]
    assert len(sent) == 4
    assert set(sent) == {EXPECTED_CORRELATION}
    assert uuid.UUID(sent[0]).version == 5
    ((_, letter),) = forwarder.dead_letters
    assert letter.correlation_id == EXPECTED_CORRELATION
    assert letter.attempts == 4
    assert letter.first_attempt_at == FIRST_ATTEMPT_AT


# --- the ledger: stale, duplicate, newer -----------------------------------------------------


@pytest.fixture
def make_guard() -> Iterator[Callable[[int], tuple[OutageGuard, list[str]]]]:
    """Guards that never probe during a test (first probe after 600 s), stopped afterwards."""
    guards: list[OutageGuard] = []

    def make(threshold: int) -> tuple[OutageGuard, list[str]]:
        calls: list[str] = []
        guard = OutageGuard(
            probe=lambda: False,
            on_open=lambda: calls.append("open"),
            on_trial=lambda: calls.append("trial"),
            on_close=lambda: calls.append("close"),
            policy=OutagePolicy(
                threshold=threshold, first_probe_seconds=600.0, max_probe_seconds=600.0
            ),
        )
        guards.append(guard)
        return guard, calls

    yield make
    for guard in guards:
        guard.stop()


def event_attempt(
    event_id: str, occurred_at: str, internal_identifier: str, number: int = 1
) -> Attempt:
    """An attempt of another event of the same relationship (tenant, customer, reseller)."""
    fields = json.loads(BODY)
    fields.update(eventId=event_id, occurredAt=occurred_at, internalIdentifier=internal_identifier)
    envelope = Envelope(
        body=json.dumps(fields).encode("utf-8"),
        content_type="application/json",
        content_encoding=None,
        headers={"x-producer": "crm"},
    )
    event = decode_event(envelope.body, envelope.content_type, envelope.headers)
    return Attempt(event, envelope, number, FIRST_ATTEMPT_AT)


def answers(*codes: int) -> FakeApi:
    """A FakeApi answering each PATCH with the next code, the last one from then on."""
    remaining = list(codes)

    def respond(request: httpx.Request) -> httpx.Response:
        code = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return httpx.Response(code)

    return FakeApi(respond)


def applier_for(
    api: FakeApi, ledger: Ledger, guard: OutageGuard | None = None
) -> tuple[Applier, RecordingForwarder]:
    forwarder = RecordingForwarder()
    policy = RetryPolicy((1.0, 2.0, 3.0), jitter=0.2)
    applier = Applier(
        api=client_for(api),
        ledger=ledger,
        forwarder=forwarder,
        policy=policy,
        guard=guard,
        rng=random.Random(7),
    )
    return applier, forwarder


def sent_identifiers(api: FakeApi) -> list[str | None]:
    return [json.loads(request.content)["internalIdentifier"] for request in api.requests]


def test_given_a_newer_event_applied_when_an_older_arrives_then_stale_nothing_sent_or_published(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = FakeApi(status(204))
    applier, forwarder = applier_for(api, make_ledger())
    assert applier.apply(event_attempt("evt-2", "2024-05-01T12:00:00Z", "CRM-NEW")) is (
        Outcome.APPLIED
    )

    # When an event that happened earlier arrives late (the same instant minus 1 µs, in +02:00)
    older = event_attempt("evt-1", "2024-05-01T13:59:59.999999+02:00", "CRM-OLD")
    outcome = applier.apply(older)

    # Then it is stale: not sent, not retried, not dead-lettered
    assert outcome is Outcome.STALE
    assert sent_identifiers(api) == ["CRM-NEW"]
    assert forwarder.retries == []
    assert forwarder.dead_letters == []


def test_given_the_same_event_twice_then_the_second_is_a_duplicate_and_one_patch_is_sent(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = FakeApi(status(204))
    applier, forwarder = applier_for(api, make_ledger())

    first = applier.apply(attempt(1))
    second = applier.apply(attempt(2))

    assert (first, second) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert len(api.requests) == 1
    assert forwarder.retries == []
    assert forwarder.dead_letters == []


def test_given_a_duplicate_seen_by_another_worker_then_it_is_not_sent_again(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = FakeApi(status(204))
    one, _ = applier_for(api, make_ledger())
    other, forwarder = applier_for(api, make_ledger())

    assert one.apply(attempt(1)) is Outcome.APPLIED
    assert other.apply(attempt(1)) is Outcome.DUPLICATE

    assert len(api.requests) == 1
    assert forwarder.retries == []


def test_given_an_older_event_then_a_newer_one_then_both_are_applied_in_order(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = FakeApi(status(204))
    applier, forwarder = applier_for(api, make_ledger())

    older = applier.apply(event_attempt("evt-1", "2024-05-01T12:00:00Z", "CRM-OLD"))
    newer = applier.apply(event_attempt("evt-2", "2024-05-01T12:00:00.000001Z", "CRM-NEW"))

    assert (older, newer) == (Outcome.APPLIED, Outcome.APPLIED)
    assert sent_identifiers(api) == ["CRM-OLD", "CRM-NEW"]
    assert forwarder.retries == []
    assert forwarder.dead_letters == []


def test_given_a_rejected_event_then_nothing_is_recorded_and_a_replay_is_sent_again(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = answers(404, 204)
    applier, _ = applier_for(api, make_ledger())

    assert applier.apply(attempt(1)) is Outcome.DEAD_LETTERED
    assert applier.apply(attempt(1)) is Outcome.APPLIED

    assert len(api.requests) == 2


# --- another worker holds the relationship ---------------------------------------------------


def test_given_the_relationship_held_by_another_worker_then_deferred_1_s_with_the_same_attempt(
    make_ledger: Callable[..., Ledger],
) -> None:
    api = FakeApi(status(204))
    applier, forwarder = applier_for(api, make_ledger(0.1))
    other_worker = make_ledger()
    current = attempt(3)

    with other_worker.hold(Relationship.of(current.event)):
        outcome = applier.apply(current)

    assert outcome is Outcome.DEFERRED
    assert api.requests == []
    assert forwarder.dead_letters == []
    ((again, delay),) = forwarder.retries
    assert again.number == 3
    assert again == current
    assert delay == 1.0


# --- outage protection -----------------------------------------------------------------------


def test_given_a_guard_of_two_and_503_then_retrying_then_deferred_without_spending_an_attempt(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(status(503))
    guard, calls = make_guard(2)
    applier, forwarder = applier_for(api, make_ledger(), guard)

    # When the first systemic failure happens
    first = applier.apply(attempt(1))
    # Then it is an ordinary retry with the next attempt number
    assert first is Outcome.RETRYING
    assert not guard.is_open
    ((retry, delay),) = forwarder.retries
    assert retry.number == 2
    assert 1.0 <= delay <= 1.2

    # When the second one happens in a row
    second = applier.apply(retry)
    # Then the guard opens and the event waits out the outage with the same attempt number
    assert second is Outcome.DEFERRED
    assert guard.is_open
    assert calls == ["open"]
    (_, (deferred, wait)) = forwarder.retries
    assert deferred.number == 2
    assert deferred == retry
    assert wait == guard.retry_in
    assert forwarder.dead_letters == []
    assert len(api.requests) == 2
    assert applier.probe_target is not None
    assert applier.probe_target.tenant == TENANT
    assert str(applier.probe_target.customer_id) == CUSTOMER
    assert str(applier.probe_target.reseller_id) == RESELLER


def test_given_an_open_guard_then_no_api_call_is_made_and_the_event_is_deferred(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(status(204))
    guard, _ = make_guard(2)
    guard.record_failure("HTTP 503")
    guard.record_failure("HTTP 503")
    assert guard.is_open
    ledger = make_ledger()
    applier, forwarder = applier_for(api, ledger, guard)

    outcome = applier.apply(attempt(4))

    assert outcome is Outcome.DEFERRED
    assert api.requests == []
    ((again, delay),) = forwarder.retries
    assert again == attempt(4)
    assert delay == guard.retry_in
    assert forwarder.dead_letters == []
    # and nothing was recorded: the event is still new once the outage is over
    with ledger.hold(Relationship.of(again.event), again.event.event_id) as hold:
        assert hold.verdict(again.event) is Verdict.NEW


def test_given_an_open_guard_and_the_delivery_limit_reached_then_still_dead_lettered(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(status(204))
    guard, _ = make_guard(1)
    guard.record_failure("HTTP 503")
    applier, forwarder = applier_for(api, make_ledger(), guard)

    outcome = applier.apply(attempt(2), delivery_count=DELIVERY_LIMIT)

    assert outcome is Outcome.DEAD_LETTERED
    assert api.requests == []
    ((_, letter),) = forwarder.dead_letters
    assert letter.reason == "delivery-limit"


def test_given_401_twice_with_a_static_token_then_it_counts_toward_the_guard(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(status(401))
    guard, calls = make_guard(2)
    applier, forwarder = applier_for(api, make_ledger(), guard)

    first = applier.apply(attempt(1))
    second = applier.apply(attempt(2))

    assert (first, second) == (Outcome.RETRYING, Outcome.DEFERRED)
    assert guard.is_open
    assert calls == ["open"]
    assert [again.number for again, _ in forwarder.retries] == [2, 2]
    assert len(api.requests) == 4
    assert forwarder.dead_letters == []


def test_given_an_api_rejection_between_systemic_failures_then_the_count_starts_again(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = answers(503, 404, 503)
    guard, calls = make_guard(2)
    applier, forwarder = applier_for(api, make_ledger(), guard)

    outcomes = [applier.apply(attempt(1)) for _ in range(3)]

    assert outcomes == [Outcome.RETRYING, Outcome.DEAD_LETTERED, Outcome.RETRYING]
    assert not guard.is_open
    assert calls == []
    assert [again.number for again, _ in forwarder.retries] == [2, 2]


def test_given_an_applied_event_between_systemic_failures_then_the_count_starts_again(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = answers(503, 204, 503)
    guard, calls = make_guard(2)
    applier, _ = applier_for(api, make_ledger(), guard)
    # The events share a relationship, which a 503 holds for a while: not what this is about.
    applier.unsettled_linger_seconds = 0.0

    outcomes = [
        applier.apply(event_attempt("evt-1", "2024-05-01T12:00:00Z", "CRM-1")),
        applier.apply(event_attempt("evt-2", "2024-05-01T12:00:01Z", "CRM-2")),
        applier.apply(event_attempt("evt-3", "2024-05-01T12:00:02Z", "CRM-3")),
    ]

    assert outcomes == [Outcome.RETRYING, Outcome.APPLIED, Outcome.RETRYING]
    assert not guard.is_open
    assert calls == []


def test_given_429_then_it_does_not_count_toward_the_guard(
    make_ledger: Callable[..., Ledger],
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(lambda request: httpx.Response(429, headers={"Retry-After": "2"}))
    guard, calls = make_guard(1)
    applier, forwarder = applier_for(api, make_ledger(), guard)

    outcome = applier.apply(attempt(1))

    assert outcome is Outcome.DEFERRED
    assert not guard.is_open
    assert calls == []
    ((again, _),) = forwarder.retries
    assert again.number == 1


# --- the ledger unreachable ------------------------------------------------------------------


def test_given_the_ledger_unreachable_then_retrying_and_nothing_applied_blindly() -> None:
    api = FakeApi(status(204))
    applier, forwarder = applier_for(api, unreachable_ledger())

    outcome = applier.apply(attempt(1))

    assert outcome is Outcome.RETRYING
    assert api.requests == []
    assert forwarder.dead_letters == []
    ((again, delay),) = forwarder.retries
    assert again.number == 2
    assert 1.0 <= delay <= 1.2


def test_given_the_ledger_unreachable_twice_then_it_counts_toward_the_guard(
    make_guard: Callable[[int], tuple[OutageGuard, list[str]]],
) -> None:
    api = FakeApi(status(204))
    guard, calls = make_guard(2)
    applier, forwarder = applier_for(api, unreachable_ledger(), guard)

    outcomes = [applier.apply(attempt(1)), applier.apply(attempt(2))]

    assert outcomes == [Outcome.RETRYING, Outcome.DEFERRED]
    assert guard.is_open
    assert calls == ["open"]
    assert [again.number for again, _ in forwarder.retries] == [2, 2]
    assert api.requests == []


@pytest.mark.parametrize(
    ("failure", "lingers"),
    [
        (httpx.ReadTimeout("late"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (httpx.ConnectError("refused"), False),
    ],
)
def test_given_a_call_without_answer_then_the_relationship_lingers_only_if_it_was_sent(
    failure: httpx.TransportError, lingers: bool
) -> None:
    # Given a call that fails without an answer (sent, or refused before sending)
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    ledger = fresh_ledger()
    applier = Applier(
        api=client_for(FakeApi(fail)),
        ledger=ledger,
        forwarder=RecordingForwarder(),
        policy=RetryPolicy((1.0,)),
        unsettled_linger_seconds=5.0,
    )
    # When it is applied
    assert applier.apply(attempt()) is Outcome.RETRYING
    # Then the relationship stays locked only when the server may still apply the request
    busy = Ledger(ledger._redis, prefix=ledger._prefix, lock_wait_seconds=0.05)
    relationship = Relationship.of(attempt().event)
    if lingers:
        with pytest.raises(RelationshipBusy), busy.hold(relationship):
            pytest.fail("a newer event could overtake a request that may still land")
    else:
        with busy.hold(relationship):
            pass
