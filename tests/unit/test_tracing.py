"""The producer's W3C trace context, read from each way a producer may send it (issue 17, item 3),
and the OTEL_* variables that decide whether spans are exported."""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker.exceptions import ConfigurationError
from worker.observability.tracing import exporter_asked, inject, producer_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STATE = "vendor=opaque"


def _trace_id(headers: dict[str, str]) -> str:
    return headers["traceparent"].split("-")[1]


@pytest.mark.parametrize(
    ("headers", "body", "content_type"),
    [
        ({"traceparent": PARENT, "tracestate": STATE}, b"{}", "application/json"),
        ({"traceparent": PARENT.encode(), "tracestate": STATE.encode()}, b"{}", None),
        ({"cloudEvents:traceparent": PARENT, "cloudEvents:tracestate": STATE}, b"{}", None),
        ({"cloudEvents_traceparent": PARENT, "cloudEvents_tracestate": STATE}, b"{}", None),
        (
            {},
            json.dumps({"specversion": "1.0", "traceparent": PARENT, "tracestate": STATE}).encode(),
            "application/cloudevents+json; charset=utf-8",
        ),
    ],
    ids=["amqp-headers", "amqp-bytes", "binary", "binary-underscore", "structured"],
)
def test_given_a_producer_context_when_read_then_the_call_continues_its_trace(
    headers: dict[str, object], body: bytes, content_type: str | None
) -> None:
    context = producer_context(headers, body, content_type)

    sent: dict[str, str] = {}
    inject(sent, context)
    assert sent == {"traceparent": PARENT, "tracestate": STATE}


@pytest.mark.parametrize(
    "traceparent", ["", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", "00-xyz-abc-01"]
)
def test_given_no_valid_traceparent_when_read_then_there_is_no_context(traceparent: str) -> None:
    assert producer_context({"traceparent": traceparent}, b"{}", None) is None
    sent: dict[str, str] = {}
    inject(sent, None)
    assert sent == {}


def test_given_a_native_event_with_a_traceparent_field_then_only_headers_count() -> None:
    body = json.dumps({"eventId": "e", "traceparent": PARENT}).encode()

    assert producer_context({}, body, "application/json") is None


def test_given_spans_recorded_then_each_is_a_child_in_the_producers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    parent = producer_context({"traceparent": PARENT}, b"{}", None)

    with tracer.start_as_current_span("ccsync.events process", context=parent):
        sent: dict[str, str] = {}
        inject(sent)

    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert format(span.context.trace_id, "032x") == TRACE_ID == _trace_id(sent)
    assert sent["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
    assert trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.parametrize(
    ("environ", "asked"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
    ],
)
def test_given_otel_variables_then_the_exporter_they_ask_for(
    environ: dict[str, str], asked: str | None
) -> None:
    assert exporter_asked(environ) == asked


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_given_an_exporter_ccsync_does_not_ship_then_one_line_names_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        exporter_asked(environ)
