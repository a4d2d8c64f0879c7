"""Issue 17, item 3: a worker exporting its spans over OTLP/HTTP (``OTEL_EXPORTER_OTLP_ENDPOINT``)
to a receiver in this test, which decodes them as a collector would (opentelemetry-proto).

Its own module: no other worker may consume the event, or its spans would be another's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.journal import wait_applied
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.processing.applier import ATTEMPT_SPAN
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: decodes each export, keeps its spans."""

    spans: list[Any]

    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    spans: list[Any] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Receiver", (_Receiver,), {"spans": spans}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", spans
    server.shutdown()
    server.server_close()


def test_given_an_otlp_endpoint_then_the_worker_exports_the_spans_of_the_producers_trace(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
    receiver: tuple[str, list[Any]],
) -> None:
    endpoint, spans = receiver
    env = own_worker_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    event = native()
    with LocalWorker(env, concurrency=4):
        producer.publish(
            json.dumps(event).encode(), "application/json", headers={"traceparent": PARENT}
        )
        [call] = wait_applied(sandbox, event["customerId"])
        by_name = wait_until(
            lambda: (
                (named := {span.name: span for span in spans}).keys()
                >= {"ccsync.events process", ATTEMPT_SPAN, "PATCH"}
                and named
            ),
            timeout=15,
            what=f"the worker's spans at the receiver (got {[s.name for s in spans]})",
        )

    consume, attempt, client = (
        by_name["ccsync.events process"],
        by_name[ATTEMPT_SPAN],
        by_name["PATCH"],
    )
    assert {span.trace_id.hex() for span in (consume, attempt, client)} == {TRACE_ID}
    assert consume.parent_span_id.hex() == PARENT.split("-")[2]
    assert attempt.parent_span_id == consume.span_id
    assert client.parent_span_id == attempt.span_id
    attributes = {item.key: item.value for item in attempt.attributes}
    assert attributes["eventId"].string_value == event["eventId"]
    assert attributes["customerId"].string_value == event["customerId"]
    assert attributes["outcome"].string_value == "applied"
    assert {"correlationId", "tenant"} <= attributes.keys()
    _, trace_id, parent_id, _ = call["headers"]["traceparent"].split("-")
    assert (trace_id, parent_id) == (TRACE_ID, client.span_id.hex())
