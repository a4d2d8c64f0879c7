"""Issue 8: /metrics after a run matches the run; production logs are one JSON object a line."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import metrics_worker_env
from tests.integration.events import native
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import final_outcomes
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


_QUEUE_DEAD = ("ccsync_queue_messages", (("queue", "ccsync.dead-letter"),))


def _metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_given_a_run_then_the_metrics_count_exactly_what_happened(
    broker_url: str,
    redis_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given a worker serving metrics, and a run of 10 good events, 1 retried, 1 rejected, 2 invalid
    port, env = metrics_worker_env(
        broker_url,
        sandbox_server.url,
        redis_url,
        CCSYNC_LOG_FORMAT="json",
        CCSYNC_RETRY_DELAYS="0.5",
    )
    good = [native() for _ in range(10)]
    retried, rejected = native(), native()
    sandbox.add_faults(retried["customerId"], {"status": 500})
    sandbox.add_faults(rejected["customerId"], {"status": 404})
    with LocalWorker(env, concurrency=4) as worker:
        # When they are published
        for event in [*good, retried, rejected]:
            producer.publish(json.dumps(event).encode(), "application/json")
        producer.publish(b"{not json", "application/json")
        producer.publish(json.dumps(native(customer_id="nope")).encode(), "application/json")
        wait_until(lambda: len(final_outcomes(worker)) >= 12, 30, "12 final outcomes")
        # The queue depths are polled: the 3 dead letters show once a reading saw them.
        wait_until(
            lambda: _samples(_metrics(port)).get(_QUEUE_DEAD) == 3, 40, "dead-letter depth read"
        )
        text = _metrics(port)
        log = worker.log

    # Then the counters say what happened
    samples = _samples(text)
    assert samples[("ccsync_events_received_total", ())] == 14
    assert samples[("ccsync_events_applied_total", ())] == 11
    assert samples[("ccsync_events_retried_total", (("reason", "api-error"),))] == 1
    assert samples[("ccsync_events_stale_total", ())] == 0
    assert samples[("ccsync_events_duplicate_total", ())] == 0
    dead = "ccsync_events_dead_lettered_total"
    assert samples[(dead, (("reason", "invalid-event"),))] == 2
    assert samples[(dead, (("reason", "api-rejected"),))] == 1
    calls = "ccsync_api_request_duration_seconds_count"
    by_status = {
        dict(labels)["status"]: n for (name, labels), n in samples.items() if name == calls
    }
    assert sum(n for status, n in by_status.items() if status.startswith("2")) == 11, by_status
    assert samples[(calls, (("status", "500"),))] == 1
    assert samples[(calls, (("status", "404"),))] == 1
    assert samples[_QUEUE_DEAD] == 3
    assert samples[("ccsync_queue_messages", (("queue", "ccsync.events"),))] == 0
    assert samples[("ccsync_queue_messages", (("queue", "ccsync.tasks"),))] == 0
    assert samples[("ccsync_delay_ladder_messages", ())] == 0
    assert samples[("ccsync_publish_to_apply_seconds_count", ())] == 11
    assert samples[("ccsync_outage_active", ())] == 0

    # And each outcome is logged as one JSON object with the event's fields
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    applied = [r for r in records if r.get("outcome") == "applied"]
    assert {r["eventId"] for r in applied} == {e["eventId"] for e in [*good, retried]}
    for record in applied:
        assert record["correlationId"] and record["tenant"] and record["customerId"]
        assert record["attempt"] >= 1 and record["duration"] >= 0
