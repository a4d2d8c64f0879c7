"""Issue 17, item 3: the producer's trace context reaches CloudCockpit, through a real worker.

The module's worker exports nothing (no ``OTEL_*`` variable): the PATCH carries the producer's
``traceparent`` as sent, on the first attempt, on a retry and after a replay from the dead-letter
queue. A worker exporting its spans: ``test_tracing_export.py``.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.events import binary, native
from tests.integration.journal import wait_applied
from tests.integration.producer import Producer
from tests.integration.test_dlq_support import ccsync, keep
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_given_a_traceparent_header_then_the_patch_continues_the_producers_trace(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    event = native()
    producer.publish(
        json.dumps(event).encode(),
        "application/json",
        headers={"traceparent": PARENT, "tracestate": "crm=1"},
    )
    [call] = wait_applied(sandbox, event["customerId"])
    assert call["headers"]["traceparent"] == PARENT
    assert call["headers"]["tracestate"] == "crm=1"


def test_given_a_binary_cloudevent_with_a_traceparent_then_the_patch_carries_it(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    event = native()
    body, headers = binary(event)
    producer.publish(
        body, "application/json", headers={**headers, "cloudEvents:traceparent": PARENT}
    )
    [call] = wait_applied(sandbox, event["customerId"])
    assert call["headers"]["traceparent"] == PARENT


def test_given_500_then_204_then_the_retry_carries_the_same_trace(
    worker: LocalWorker, clean_queues: None, sandbox: SandboxControl, producer: Producer
) -> None:
    event = native()
    sandbox.add_faults(event["customerId"], {"status": 500})
    producer.publish(
        json.dumps(event).encode(), "application/json", headers={"traceparent": PARENT}
    )
    calls = wait_applied(sandbox, event["customerId"])
    assert [call["status"] for call in calls] == [500, 204]
    assert [call["headers"]["traceparent"] for call in calls] == [PARENT, PARENT]


@pytest.mark.usefixtures("clean_environment")  # the dead-letter store in the test's directory
def test_given_a_dead_letter_replayed_then_the_patch_carries_the_producers_trace(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    event = native()
    sandbox.add_faults(event["customerId"], {"status": 500, "times": 4})
    producer.publish(
        json.dumps(event).encode(), "application/json", headers={"traceparent": PARENT}
    )

    # Replayed once it is dead-lettered (after its 4 attempts) and kept, as an operator would.
    result = wait_until(
        lambda: (
            keep(broker_url) is None
            and (done := ccsync(broker_url, "dlq", "replay", "--event-id", event["eventId"]))
            and "replayed 1 of 1" in done.stdout
            and done
        ),
        timeout=30,
        what="the dead letter to be replayed",
    )

    assert result.exit_code == 0
    calls = wait_applied(sandbox, event["customerId"])
    assert {call["headers"]["traceparent"] for call in calls} == {PARENT}
