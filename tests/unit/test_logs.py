"""Logs: every line, JSON or text, its traceback too, without any secret the settings hold."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from opentelemetry.sdk.trace import TracerProvider

from worker.observability.logs import configure_logging
from worker.settings import Settings

INGEST_TOKEN = "okmp7ed4SpPZoE3LWyBCXQQzRnvzP_slPkbIAcPeZSc"
CONSOLE_TOKEN = 'console "token"/é-0123456789'

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_given_secrets_in_a_message_its_fields_and_its_traceback_then_no_line_holds_one(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given logging configured with settings holding the ingest and console tokens
    settings = Settings(
        _env_file=None,
        log_format=log_format,
        ingest_token=INGEST_TOKEN,
        console_token=CONSOLE_TOKEN,
        redis_url="redis://:pw@127.0.0.1:6379/0",
    )
    configure_logging("INFO", settings)
    log = logging.getLogger("ccsync.test")

    # When a line quotes them: in its message, a field, and an exception's traceback
    try:
        raise RuntimeError(f"refused {quote(CONSOLE_TOKEN)} and password=pw")
    except RuntimeError:
        log.exception("token %s", INGEST_TOKEN, extra={"tenant": json.dumps(CONSOLE_TOKEN)})

    # Then the line says where they were, and holds none of them in any form
    written = capsys.readouterr().err
    assert "refused ***" in written and "password=***" in written
    for secret in (INGEST_TOKEN, CONSOLE_TOKEN):
        for form in (secret, quote(secret), json.dumps(secret)[1:-1]):
            assert form not in written


@pytest.mark.usefixtures("root_logging")
def test_given_a_current_span_then_a_json_line_carries_its_trace_and_span_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given JSON logs and a tracer recording spans
    configure_logging("INFO", Settings(_env_file=None, log_format="json"))
    tracer = TracerProvider().get_tracer("tests")
    log = logging.getLogger("ccsync.test")

    # When a line is logged inside a span, and one outside any
    with tracer.start_as_current_span("attempt") as span:
        log.info("inside")
    log.info("outside")

    # Then the first carries the span's trace and span ids, in W3C's hex; the second neither
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside and "span_id" not in outside
