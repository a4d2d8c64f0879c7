"""Issue 2: events in all three encodings become contract-valid PATCH calls, end to end."""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from tests.integration.conftest import TENANT
from tests.integration.events import binary, native, structured
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.events import correlation_id
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

PATCH_PATH = "/v1/Customers/{customerId}/internal-identifier"
PATH_PATTERN = re.compile(r"^/v1/Customers/([^/]+)/internal-identifier$")


def _validators(openapi: dict[str, Any]) -> dict[str, OAS30Validator]:
    operation = openapi["paths"][PATCH_PATH]["patch"]
    parameters = openapi["components"]["parameters"]
    return {
        "body": OAS30Validator(
            operation["requestBody"]["content"]["application/json"]["schema"],
            format_checker=oas30_format_checker,
        ),
        "x-tenant": OAS30Validator(
            parameters["XTenant"]["schema"], format_checker=oas30_format_checker
        ),
        "x-correlation-id": OAS30Validator(
            parameters["XCorrelationId"]["schema"], format_checker=oas30_format_checker
        ),
    }


def _patches_by_customer(sandbox: SandboxControl) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in sandbox.journal():
        if entry["method"] == "PATCH" and entry["customerId"]:
            grouped[entry["customerId"]].append(dict(entry))
    return grouped


def test_given_140_events_in_three_encodings_when_published_then_each_reaches_the_api(
    worker: LocalWorker,
    sandbox: SandboxControl,
    producer: Producer,
    openapi_document: dict[str, Any],
) -> None:
    # Given 100 native, 20 CloudEvents structured and 20 binary events for distinct customers,
    # three of whose first calls fail so that one event is tried several times
    events = [native(identifier=f"ERP-{n:03d}") for n in range(140)]
    retried = events[:2] + events[100:101] + events[120:121]
    for event in retried:
        sandbox.add_faults(event["customerId"], {"status": 500}, {"drop": True})

    # When a plain AMQP producer publishes them
    for event in events[:100]:
        producer.publish(json.dumps(event).encode(), "application/json")
    for event in events[100:120]:
        producer.publish(structured(event), "application/cloudevents+json")
    for index, event in enumerate(events[120:]):
        body, headers = binary(event, "cloudEvents:" if index % 2 else "cloudEvents_")
        producer.publish(body, "application/json", headers)

    # Then every event is applied, each call valid against openapi.yaml
    wanted = {event["customerId"] for event in events}
    patches = wait_until(
        lambda: (
            (found := _patches_by_customer(sandbox))
            and all(any(p["status"] == 204 for p in found.get(c, [])) for c in wanted)
            and found
        ),
        timeout=60,
        what="a successful PATCH for each of the 140 customers",
    )
    validators = _validators(openapi_document)
    for event in events:
        calls = patches[event["customerId"]]
        expected_correlation = str(correlation_id(TENANT, event["eventId"]))
        for call in calls:
            assert PATH_PATTERN.match(call["path"])
            uuid.UUID(PATH_PATTERN.match(call["path"]).group(1))  # type: ignore[union-attr]
            headers = call["headers"]
            validators["body"].validate(call["body"])
            validators["x-tenant"].validate(headers["x-tenant"])
            validators["x-correlation-id"].validate(headers["x-correlation-id"])
            assert headers["x-tenant"] == TENANT
            assert headers["authorization"].startswith("Bearer ")
            assert headers["content-type"] == "application/json"
            # the same X-Correlation-Id on every attempt, derived from (tenant, eventId)
            assert headers["x-correlation-id"] == expected_correlation
            assert call["body"] == {
                "internalIdentifier": event["internalIdentifier"],
                "resellerId": None,
            }
        assert len(calls) == (3 if event in retried else 1)
    final = {customer["id"]: customer["relationships"] for customer in sandbox.state()}
    for event in events:
        assert final[event["customerId"]] == {"self": event["internalIdentifier"]}
