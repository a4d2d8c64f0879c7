"""Tracing through ``Applier`` (issue 17, item 3): real Redis, the sandbox (its journal keeps each
request's headers), httpx's real transports (the instrumentation patches those, not a mock's).

Without a tracer provider the PATCH carries the producer's ``traceparent`` as sent; with one
(an ``InMemorySpanExporter``) each attempt is a span in the producer's trace, its call a client
span under it, and the PATCH carries the client span's context, on the sync client of retries as
on the asyncio client of first attempts.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.unit.redis_ledgers import fresh_ledger
from tests.unit.test_apply import CUSTOMER, EXPECTED_CORRELATION, RESELLER, RecordingForwarder
from tests.unit.test_apply import ENVELOPE as PLAIN_ENVELOPE
from worker.cloudcockpit.client import (
    CloudCockpitClient,
    make_async_connection,
    make_http_client,
    make_token_source,
)
from worker.constants import EVENTS_QUEUE
from worker.events import decode_event
from worker.observability import tracing
from worker.observability.logs import JsonFormatter
from worker.observability.redaction import Redaction
from worker.processing import applier as applier_module
from worker.processing.applier import ATTEMPT_SPAN, Applier, Outcome
from worker.processing.attempts import Attempt
from worker.processing.backoff import RetryPolicy
from worker.processing.dead_letters import Envelope
from worker.processing.ledger import Hold
from worker.sandbox import SandboxServer
from worker.sandbox.config import DEFAULT_STATIC_TOKEN
from worker.sandbox.control_client import SandboxControl
from worker.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"
ENVELOPE = Envelope(
    body=PLAIN_ENVELOPE.body,
    content_type=PLAIN_ENVELOPE.content_type,
    content_encoding=None,
    headers={"traceparent": PARENT, "tracestate": "vendor=opaque"},
)

pytestmark = pytest.mark.usefixtures("clean_environment")


Api = tuple[SandboxControl, str]


@pytest.fixture
def api(sandbox: SandboxControl, sandbox_server: SandboxServer) -> Iterator[Api]:
    yield sandbox, sandbox_server.url
    while _CLIENTS:
        _CLIENTS.pop().close()


_CLIENTS: list[httpx.Client] = []


def _patches(sandbox: SandboxControl) -> list[dict[str, str]]:
    """The headers of each PATCH the sandbox received, in order, lower-cased."""
    return [
        {name.lower(): value for name, value in entry["headers"].items()}
        for entry in sandbox.journal(customer_id=CUSTOMER)
        if entry["method"] == "PATCH"
    ]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory, and the httpx instrumentation on, for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.record_with(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        HTTPXClientInstrumentor().uninstrument()
        tracing.record_with(None)


def _applier(base_url: str) -> Applier:
    settings = Settings(CLOUDCOCKPIT_BASE_URL=base_url, CLOUDCOCKPIT_TOKEN=DEFAULT_STATIC_TOKEN)
    http = make_http_client(settings)
    _CLIENTS.append(http)
    return Applier(
        api=CloudCockpitClient(
            http, base_url=settings.base_url, tokens=make_token_source(settings, http)
        ),
        ledger=fresh_ledger(),
        forwarder=RecordingForwarder(),
        policy=RetryPolicy((1.0,), jitter=0.0),
        rng=random.Random(1),
    )


def _attempt(number: int = 1) -> Attempt:
    event = decode_event(ENVELOPE.body, ENVELOPE.content_type, ENVELOPE.headers)
    return Attempt(event, ENVELOPE, number, "2024-05-01T12:00:00+00:00")


def _ids(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def _hex(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def test_given_no_tracer_provider_when_applied_then_the_patch_carries_the_producers_context(
    api: Api,
) -> None:
    sandbox, base_url = api
    sandbox.add_faults(CUSTOMER, {"status": 500})
    applier = _applier(base_url)

    assert applier.apply(_attempt(1)) is Outcome.RETRYING
    assert applier.apply(_attempt(2)) is Outcome.APPLIED

    seen = _patches(sandbox)
    assert [headers["traceparent"] for headers in seen] == [PARENT, PARENT]
    assert {headers["tracestate"] for headers in seen} == {"vendor=opaque"}


def test_given_no_producer_context_when_applied_then_the_patch_carries_none(
    api: Api,
) -> None:
    sandbox, base_url = api
    plain = Attempt(
        decode_event(PLAIN_ENVELOPE.body, PLAIN_ENVELOPE.content_type, {}),
        PLAIN_ENVELOPE,
        1,
        "2024-05-01T12:00:00+00:00",
    )

    assert _applier(base_url).apply(plain) is Outcome.APPLIED
    assert "traceparent" not in _patches(sandbox)[0]


def test_given_spans_recorded_when_a_retry_is_applied_then_consume_attempt_and_call_nest(
    api: Api, spans: InMemorySpanExporter
) -> None:
    sandbox, base_url = api
    applier = _applier(base_url)
    attempt = _attempt(2)

    with tracing.consuming(
        ENVELOPE.headers, ENVELOPE.body, ENVELOPE.content_type, queue=EVENTS_QUEUE
    ) as consumed:
        assert applier.apply(attempt, consumed=consumed) is Outcome.APPLIED

    finished = {span.name: span for span in spans.get_finished_spans()}
    consume, attempt_span, client = (
        finished[f"{EVENTS_QUEUE} process"],
        finished[ATTEMPT_SPAN],
        finished["PATCH"],
    )
    assert consume.kind is SpanKind.CONSUMER and consume.parent is not None
    assert format(consume.parent.span_id, "016x") == PRODUCER_SPAN
    assert attempt_span.parent == consume.context
    assert client.kind is SpanKind.CLIENT and client.parent == attempt_span.context
    assert dict(attempt_span.attributes or {}) == {
        "eventId": "evt-42",
        "correlationId": EXPECTED_CORRELATION,
        "tenant": "portal.example.com",
        "customerId": attempt.event.customer_id.__str__(),
        "attempt": 2,
        "outcome": "applied",
    }
    assert {_hex(span)[0] for span in (consume, attempt_span, client)} == {TRACE_ID}
    assert _ids(_patches(sandbox)[0]["traceparent"]) == _hex(client)
    assert str(attempt.event.reseller_id) == RESELLER


def test_given_spans_recorded_when_called_from_the_event_loop_then_the_call_is_a_child_span(
    api: Api, spans: InMemorySpanExporter
) -> None:
    sandbox, base_url = api
    sandbox.add_faults(CUSTOMER, {"status": 503})
    applier = _applier(base_url)
    settings = Settings(CLOUDCOCKPIT_BASE_URL=base_url, CLOUDCOCKPIT_TOKEN=DEFAULT_STATIC_TOKEN)

    async def fence(hold: Hold, lease_seconds: float) -> None:
        applier.ledger.fence(hold, lease_seconds=lease_seconds)

    async def no_budget(tenant: str) -> None:
        pass

    async def first_attempt() -> Outcome:
        call = applier.prepare(_attempt(1))
        call.hold = applier.ledger.acquire(call.relationship, call.attempt.event.event_id)
        async with make_async_connection(settings) as connection:
            await applier.send_async(call, connection=connection, fence=fence, budget=no_budget)
        applier.leave_all([call])
        return applier.conclude(call)

    assert asyncio.run(first_attempt()) is Outcome.RETRYING

    finished = {span.name: span for span in spans.get_finished_spans()}
    attempt_span, client = finished[ATTEMPT_SPAN], finished["PATCH"]
    assert attempt_span.parent is not None
    assert format(attempt_span.parent.span_id, "016x") == PRODUCER_SPAN
    assert attempt_span.attributes is not None
    assert attempt_span.attributes["outcome"] == "retrying"
    assert not attempt_span.status.is_ok
    assert client.parent == attempt_span.context
    assert _ids(_patches(sandbox)[0]["traceparent"]) == _hex(client)
    assert _hex(client)[0] == TRACE_ID


def test_given_spans_recorded_when_an_outcome_is_logged_then_its_line_carries_the_attempt_span(
    api: Api, spans: InMemorySpanExporter
) -> None:
    # Given JSON lines of the applier's log, and spans recorded
    _, base_url = api
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter(Redaction([])))
    applier_log = logging.getLogger(applier_module.__name__)
    applier_log.addHandler(handler)
    level = applier_log.level
    applier_log.setLevel(logging.INFO)

    # When an attempt is applied
    try:
        assert _applier(base_url).apply(_attempt(1)) is Outcome.APPLIED
    finally:
        applier_log.removeHandler(handler)
        applier_log.setLevel(level)

    # Then its outcome line carries the ids of the attempt's span, in the producer's trace
    [line] = [json.loads(text) for text in lines.getvalue().splitlines()]
    [attempt_span] = [s for s in spans.get_finished_spans() if s.name == ATTEMPT_SPAN]
    assert line["outcome"] == "applied"
    assert (line["trace_id"], line["span_id"]) == _hex(attempt_span)
    assert line["trace_id"] == TRACE_ID
