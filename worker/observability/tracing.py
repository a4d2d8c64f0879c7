"""Tracing with OpenTelemetry: the producer's W3C trace context, carried on to CloudCockpit.

A producer may send its trace context (W3C Trace Context: ``traceparent`` and ``tracestate``) as
AMQP application headers, or as the CloudEvents distributed-tracing extension: the
``traceparent``/``tracestate`` attributes of a structured event, or the ``cloudEvents:traceparent``
(``cloudEvents_traceparent``) headers of a binary one. ``producer_context`` reads it from the
message as the producer sent it; the envelope keeps that message through retries, dead letters and
replays, so every attempt reads the same context again.

Spans are made and exported only when the standard ``OTEL_*`` variables ask for an exporter
(``configure_tracing``); otherwise nothing is recorded and the context is only propagated, which
costs a few dictionary lookups for an event that carries none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.constants import CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_HEADER_PREFIXES
from worker.exceptions import ConfigurationError

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
#: ``OTEL_TRACES_EXPORTER`` values ccsync can honour; ``none`` turns export off.
EXPORTERS: Final = ("otlp", "console", "none")
#: The instrumentation scope of ccsync's own spans.
TRACER_NAME: Final = "ccsync"

_W3C: Final = TraceContextTextMapPropagator()
#: The tracer of ccsync's spans once a provider records them (``record_with``); None: nothing is
#: recorded, the producer's context is only propagated.
_tracer: Tracer | None = None


def producer_trace_headers(
    headers: Mapping[str, Any], body: bytes, content_type: str | None
) -> dict[str, str]:
    """The producer's ``traceparent`` and ``tracestate`` as sent, from wherever they were put:
    AMQP headers first, then a binary CloudEvent's attributes, then a structured one's."""
    found: dict[str, str] = {}
    for field in (TRACEPARENT, TRACESTATE):
        for key in (field, *(f"{prefix}{field}" for prefix in CLOUDEVENTS_HEADER_PREFIXES)):
            value = headers.get(key)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str) and value:
                found[field] = value
                break
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if (
        TRACEPARENT not in found
        and media_type == CLOUDEVENTS_CONTENT_TYPE
        and b"traceparent" in body
    ):
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            event = None
        if isinstance(event, dict):
            for field in (TRACEPARENT, TRACESTATE):
                value = event.get(field)
                if isinstance(value, str) and value:
                    found[field] = value
    return found


def producer_context(
    headers: Mapping[str, Any], body: bytes, content_type: str | None
) -> Context | None:
    """The producer's trace context, or None when the message carries no valid one."""
    carrier = producer_trace_headers(headers, body, content_type)
    if TRACEPARENT not in carrier:
        return None
    context = _W3C.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def inject(headers: dict[str, str], context: Context | None = None) -> None:
    """Writes ``traceparent``/``tracestate`` of ``context`` (the current one by default) into
    ``headers``; writes nothing when there is no valid span in it."""
    _W3C.inject(headers, context=context)


def record_with(provider: trace.TracerProvider | None) -> None:
    """Spans are recorded by ``provider`` from now on; None: no more spans, propagation only."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def recording() -> bool:
    """Whether spans are recorded (a provider was set up by ``configure_tracing``)."""
    return _tracer is not None


@dataclass(frozen=True, slots=True)
class Traced:
    """The context an attempt's calls run in, and its span when spans are recorded (then the
    context holds it); without spans the context is the producer's own, so the PATCH carries
    the producer's ``traceparent`` as sent."""

    context: Context
    span: Span | None = None


@contextmanager
def consuming(
    headers: Mapping[str, Any], body: bytes, content_type: str | None, *, queue: str
) -> Iterator[Context | None]:
    """Around the intake of one message: a CONSUMER span ``<queue> process`` in the producer's
    trace when spans are recorded. Yields the context its attempt is to continue: the span's,
    or the producer's (None when it sent none)."""
    parent = producer_context(headers, body, content_type)
    if _tracer is None:
        yield parent
        return
    with _tracer.start_as_current_span(
        f"{queue} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
        },
    ) as span:
        yield trace.set_span_in_context(span)


def start_attempt(
    parent: Context | None, *, name: str, attributes: Mapping[str, str | int]
) -> Traced | None:
    """The span of one attempt, a child of ``parent``, left open until ``end_attempt``; None
    when there is neither a span to record nor a context to propagate."""
    if _tracer is None:
        return None if parent is None else Traced(parent)
    span = _tracer.start_span(name, context=parent, attributes=attributes)
    return Traced(trace.set_span_in_context(span), span)


def end_attempt(traced: Traced | None, outcome: str, *, failed: bool = False) -> None:
    """Ends the attempt's span with its ``outcome``; ``failed`` marks it an error."""
    if traced is None or traced.span is None:
        return
    traced.span.set_attribute("outcome", outcome)
    if failed:
        traced.span.set_status(StatusCode.ERROR, outcome)
    traced.span.end()


@contextmanager
def calling(traced: Traced | None) -> Iterator[None]:
    """The attempt's context made current around its call: the httpx instrumentation makes its
    client span a child of it, and ``inject`` writes it into the request. Around its conclusion
    too: the lines it logs then carry its span's ids (``current_span_ids``)."""
    if traced is None:
        yield
        return
    token = otel_context.attach(traced.context)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_span_ids() -> tuple[str, str] | None:
    """The trace and span ids of the span current in this thread, as W3C writes them (32 and 16
    hex digits), when ccsync records it; None otherwise: no span, or only a producer's context
    being propagated (its ids are the producer's, not a span of ccsync's)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def exporter_asked(environ: Mapping[str, str]) -> str | None:
    """The exporter the ``OTEL_*`` variables ask for (``otlp`` or ``console``), or None.

    An OTLP endpoint alone asks for ``otlp``; ``OTEL_TRACES_EXPORTER=none`` or
    ``OTEL_SDK_DISABLED=true`` ask for none. Raises ``ConfigurationError`` naming the variable
    for an exporter or protocol ccsync does not ship.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named and named not in EXPORTERS:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: {named!r} is not one of {', '.join(EXPORTERS)}"
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol != "http/protobuf":
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r}; ccsync exports OTLP over http/protobuf"
        )
    if named:
        return None if named == "none" else named
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return "otlp" if endpoint else None


def configure_tracing(environ: Mapping[str, str] | None = None) -> Any:
    """Sets up the SDK when the ``OTEL_*`` variables ask for an exporter: a TracerProvider
    (service ``ccsync`` unless ``OTEL_SERVICE_NAME`` says otherwise, sampler from
    ``OTEL_TRACES_SAMPLER``) exporting in batches, and the httpx instrumentation that makes the
    client span of each call and puts its context into the request. Returns the provider, or None
    when nothing is to be exported (then nothing is recorded: the context is only propagated).
    """
    environ = os.environ if environ is None else environ
    exporter_name = exporter_asked(environ)
    if exporter_name is None:
        return None
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or TRACER_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    record_with(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return provider
