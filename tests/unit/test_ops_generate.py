"""Generated ops files (definitions, event schema, AsyncAPI document) agree with the code."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import ValidationError

from tests.integration.events import native as native_event
from tests.producer_sdks import amqp_binding, rabbitmq_binding
from tools import generate_ops as ops_generate
from worker.amqp.topology import (
    backfill_queue,
    dead_letter_queue,
    delay_entry_exchange,
    delay_routing_key,
    events_queue,
    tasks_queue,
)
from worker.constants import (
    BACKFILL_QUEUE,
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_QUEUE,
    DELAY_LEVELS,
    DELAY_TICK_MS,
    EVENT_ROUTING_KEY,
    EVENTS_EXCHANGE,
    EVENTS_QUEUE,
    TASKS_QUEUE,
)
from worker.events import CloudEvent, IdentifierChanged, decode_event

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate it: python -m tools.generate_ops"


def committed_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- nothing drifts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(ops_generate.GENERATED), ids=lambda p: str(p.relative_to(REPO))
)
def test_given_the_code_when_its_files_are_regenerated_then_they_equal_the_committed_ones(
    path: Path,
) -> None:
    render = ops_generate.GENERATED[path]

    regenerated = render()

    assert path.exists(), f"{path.relative_to(REPO)} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == regenerated, (
        f"{path.relative_to(REPO)} is stale: {REGENERATE}"
    )


def test_given_fresh_files_when_the_generator_checks_then_it_reports_none_stale() -> None:
    assert ops_generate.main(["--check"]) == 0


# --- definitions.json describes what the worker declares ---------------------------------------


def test_given_the_definitions_then_each_queue_has_exactly_the_arguments_the_worker_declares() -> (
    None
):
    definitions = committed_json(ops_generate.DEFINITIONS_PATH)
    queues = {q["name"]: q for q in definitions["queues"]}

    assert queues[EVENTS_QUEUE]["arguments"] == events_queue.queue_arguments
    assert queues[BACKFILL_QUEUE]["arguments"] == backfill_queue.queue_arguments
    assert queues[TASKS_QUEUE]["arguments"] == tasks_queue.queue_arguments
    assert queues[DEAD_LETTER_QUEUE]["arguments"] == dead_letter_queue.queue_arguments
    assert all(q["durable"] and not q["auto_delete"] for q in queues.values())
    assert len(queues) == 4 + DELAY_LEVELS
    for level in range(DELAY_LEVELS):
        arguments = queues[f"ccsync.delay.{level}"]["arguments"]
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-message-ttl"] == 2**level * DELAY_TICK_MS
        below = f"ccsync.delay.{level - 1}" if level else "ccsync.delay.release"
        assert arguments["x-dead-letter-exchange"] == below


def test_given_the_definitions_then_every_name_they_mention_is_an_object_they_define() -> None:
    definitions = committed_json(ops_generate.DEFINITIONS_PATH)
    exchanges = {e["name"] for e in definitions["exchanges"]}
    queues = {q["name"] for q in definitions["queues"]}

    for binding in definitions["bindings"]:
        assert binding["source"] in exchanges
        kind = binding["destination_type"]
        assert binding["destination"] in (queues if kind == "queue" else exchanges)
    for queue in definitions["queues"]:
        target = queue["arguments"].get("x-dead-letter-exchange")
        assert target is None or target in exchanges
    assert {
        o["vhost"] for kind in ("exchanges", "queues", "bindings") for o in definitions[kind]
    } == {"/"}


def test_given_the_definitions_then_producers_find_their_exchange_and_routing_key() -> None:
    definitions = committed_json(ops_generate.DEFINITIONS_PATH)

    exchange = next(e for e in definitions["exchanges"] if e["name"] == EVENTS_EXCHANGE)
    binding = next(b for b in definitions["bindings"] if b["destination"] == EVENTS_QUEUE)

    assert (exchange["type"], exchange["durable"]) == ("topic", True)
    assert (binding["source"], binding["routing_key"]) == (EVENTS_EXCHANGE, EVENT_ROUTING_KEY)
    # ccsync dead-letters producers' messages itself, never the broker (see worker/amqp/topology.py)
    assert "x-dead-letter-exchange" not in events_queue.queue_arguments


def _topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` is zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def _ride_the_ladder(definitions: dict[str, Any], routing_key: str) -> tuple[float, list[str]]:
    """Follow a message through the definitions' bindings: seconds held, queues visited."""
    queues = {q["name"]: q for q in definitions["queues"]}
    held_ms, visited = 0, []
    exchange = delay_entry_exchange().name
    for _ in range(4 * DELAY_LEVELS):
        routes = [
            b
            for b in definitions["bindings"]
            if b["source"] == exchange and _topic_matches(b["routing_key"], routing_key)
        ]
        assert len(routes) == 1, f"{routing_key} at {exchange} matches {len(routes)} bindings"
        route = routes[0]
        if route["destination_type"] == "exchange":
            exchange = route["destination"]
            continue
        visited.append(route["destination"])
        arguments = queues[route["destination"]]["arguments"]
        if "x-message-ttl" not in arguments:
            return held_ms / 1000, visited
        held_ms += arguments["x-message-ttl"]
        exchange = arguments["x-dead-letter-exchange"]
    raise AssertionError(f"{routing_key} never left the ladder")


@pytest.mark.parametrize("seconds", [0, 0.1, 0.3, 2.0, 60.0, 3600.0, 86_400 * 4.5])
def test_given_a_delay_when_a_message_follows_the_definitions_then_it_waits_that_long_in_tasks(
    seconds: float,
) -> None:
    definitions = committed_json(ops_generate.DEFINITIONS_PATH)

    held, visited = _ride_the_ladder(definitions, delay_routing_key(seconds))

    assert held == pytest.approx(seconds, abs=DELAY_TICK_MS / 2000)
    assert visited[-1] == TASKS_QUEUE


def test_given_the_definitions_then_they_carry_no_users_vhosts_or_passwords() -> None:
    definitions = committed_json(ops_generate.DEFINITIONS_PATH)

    assert set(definitions) == {"exchanges", "queues", "bindings", "policies"}


def test_given_the_dev_access_file_then_its_guest_password_is_guest() -> None:
    """The compose broker's account must match the CCSYNC_BROKER_URL of docker-compose.yml."""
    access = committed_json(REPO / "ops" / "rabbitmq" / "dev-access.json")
    user = access["users"][0]

    salted = base64.b64decode(user["password_hash"])
    salt, digest = salted[:4], salted[4:]

    assert user["name"] == "guest"
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert digest == hashlib.sha256(salt + b"guest").digest()
    assert access["permissions"] == [
        {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    ]


# --- event.schema.json is the model ------------------------------------------------------------


def test_given_the_schema_file_then_it_is_the_models_own_schema() -> None:
    schema = committed_json(ops_generate.EVENT_SCHEMA_PATH)

    assert schema.pop("$schema") == "https://json-schema.org/draft/2020-12/schema"
    assert schema == IdentifierChanged.model_json_schema(by_alias=True)
    Draft202012Validator.check_schema(schema)


VALID = {
    "eventId": "e-1",
    "eventType": "customer.internal-identifier.changed",
    "occurredAt": "2025-03-14T09:26:53Z",
    "customerId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "internalIdentifier": "CRM-1",
}

SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("minimal", VALID),
    ("null identifier clears", {**VALID, "internalIdentifier": None}),
    ("all fields", {**VALID, "tenant": "t.example", "resellerId": VALID["customerId"]}),
    ("unknown fields ignored", {**VALID, "priority": "high"}),
    ("no eventId", {k: v for k, v in VALID.items() if k != "eventId"}),
    ("empty eventId", {**VALID, "eventId": ""}),
    ("eventId of 201 chars", {**VALID, "eventId": "e" * 201}),
    ("other eventType", {**VALID, "eventType": "customer.created"}),
    ("identifier key missing", {k: v for k, v in VALID.items() if k != "internalIdentifier"}),
    ("identifier of 256 chars", {**VALID, "internalIdentifier": "x" * 256}),
    ("identifier a number", {**VALID, "internalIdentifier": 5}),
    ("customerId not a UUID", {**VALID, "customerId": "abc"}),
    ("occurredAt a number", {**VALID, "occurredAt": 1700000000}),
    ("occurredAt not a timestamp", {**VALID, "occurredAt": "yesterday"}),
    ("empty tenant", {**VALID, "tenant": ""}),
]


def _model_accepts(payload: dict[str, Any]) -> bool:
    try:
        IdentifierChanged.model_validate(payload)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("case", "payload"), SAMPLES, ids=[case for case, _ in SAMPLES])
def test_given_an_event_when_schema_and_model_judge_it_then_they_agree(
    case: str, payload: dict[str, Any]
) -> None:
    validator = Draft202012Validator(
        committed_json(ops_generate.EVENT_SCHEMA_PATH), format_checker=FormatChecker()
    )

    schema_accepts = validator.is_valid(payload)

    assert schema_accepts == _model_accepts(payload), case


# --- asyncapi.yaml describes the same contract -------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ops_generate.ASYNCAPI_PATH.read_text("utf-8"))
    return document


def node_path(ref: str) -> list[str]:
    return ref.removeprefix("#/").split("/")


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follows local ``$ref``s (``#/a/b``) until a real object."""
    while isinstance(node, dict) and set(node) == {"$ref"}:
        target: Any = document
        for part in node_path(node["$ref"]):
            target = target[part]
        node = target
    return node


def test_given_the_asyncapi_document_then_it_names_the_exchange_and_routing_key(
    asyncapi: dict[str, Any],
) -> None:
    channel = asyncapi["channels"]["customerEvents"]
    amqp = channel["bindings"]["amqp"]

    assert asyncapi["asyncapi"].startswith("3.0")
    assert channel["address"] == EVENT_ROUTING_KEY
    assert amqp["is"] == "routingKey"
    assert amqp["exchange"] == {
        "name": EVENTS_EXCHANGE,
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    operation = asyncapi["operations"]["receiveIdentifierChanged"]
    assert resolve(asyncapi, operation["channel"]) is channel
    assert operation["bindings"]["amqp"]["deliveryMode"] == 2


def test_given_the_asyncapi_document_then_it_offers_the_three_encodings(
    asyncapi: dict[str, Any],
) -> None:
    messages = {
        name: resolve(asyncapi, ref)
        for name, ref in asyncapi["channels"]["customerEvents"]["messages"].items()
    }

    content_types = sorted(m["contentType"] for m in messages.values())
    binary = messages["cloudEventBinary"]

    assert content_types == sorted(
        ["application/json", CLOUDEVENTS_CONTENT_TYPE, "application/json"]
    )
    assert "cloudEvents:specversion" in binary["headers"]["properties"]
    assert "cloudEvents_specversion" in binary["headers"]["properties"]


def test_given_the_asyncapi_payloads_then_they_are_the_models_schemas(
    asyncapi: dict[str, Any],
) -> None:
    messages = asyncapi["components"]["messages"]
    native = resolve(asyncapi, messages["identifierChanged"]["payload"])
    structured = resolve(asyncapi, messages["cloudEventStructured"]["payload"])
    data = resolve(asyncapi, messages["cloudEventBinary"]["payload"])

    cloud_event = CloudEvent.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    data_schema = cloud_event.pop("$defs")["CloudEventData"]
    assert native == IdentifierChanged.model_json_schema(by_alias=True)
    assert native == {
        k: v for k, v in committed_json(ops_generate.EVENT_SCHEMA_PATH).items() if k != "$schema"
    }
    assert structured == cloud_event
    assert data == data_schema
    assert resolve(asyncapi, structured["properties"]["data"]) == data_schema


def _examples(asyncapi: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for name, message in asyncapi["components"]["messages"].items():
        for example in message["examples"]:
            found.append((f"{name}/{example['name']}", message, example))
    return found


def test_given_each_asyncapi_example_when_the_worker_decodes_it_then_it_is_a_valid_event(
    asyncapi: dict[str, Any],
) -> None:
    decoded = {}
    for label, message, example in _examples(asyncapi):
        body = json.dumps(example["payload"]).encode()

        event = decode_event(body, message["contentType"], example.get("headers", {}))

        decoded[label] = event
    assert {e.customer_id for e in decoded.values()} == {
        decoded["identifierChanged/set"].customer_id
    }
    assert decoded["cloudEventStructured/set"].event_id == decoded["identifierChanged/set"].event_id
    assert (
        decoded["cloudEventBinary/set"].occurred_at == decoded["identifierChanged/set"].occurred_at
    )
    assert decoded["identifierChanged/clear"].internal_identifier is None


def test_given_each_asyncapi_example_then_its_own_schemas_accept_it(
    asyncapi: dict[str, Any],
) -> None:
    for label, message, example in _examples(asyncapi):
        schemas = {"payload": message["payload"], "headers": message.get("headers")}
        for part, schema in schemas.items():
            if schema is None:
                continue
            bundle = {**resolve(asyncapi, schema), "components": asyncapi["components"]}

            errors = list(
                Draft202012Validator(bundle, format_checker=FormatChecker()).iter_errors(
                    example[part]
                )
            )

            assert not errors, f"{label} {part}: {[e.message for e in errors]}"


@pytest.mark.parametrize("binding", ["amqp", "rabbitmq"])
def test_given_a_cloudevents_sdk_binary_message_then_the_asyncapi_headers_schema_accepts_it(
    asyncapi: dict[str, Any], binding: str
) -> None:
    # Given the headers the CloudEvents SDK's AMQP (cloudEvents_*, time in milliseconds) or
    # RabbitMQ (ce-*) binding writes in binary mode
    event = native_event(occurred_at=datetime.now(UTC))
    headers = (
        amqp_binding(event, "binary").application_properties
        if binding == "amqp"
        else rabbitmq_binding(event, "binary").headers
    )
    schema = asyncapi["components"]["messages"]["cloudEventBinary"]["headers"]
    bundle = {**resolve(asyncapi, schema), "components": asyncapi["components"]}

    # When the document's schema judges them, then it accepts them
    errors = list(Draft202012Validator(bundle, format_checker=FormatChecker()).iter_errors(headers))
    assert not errors, [e.message for e in errors]


def test_given_the_asyncapi_text_then_no_secret_or_local_path_is_in_it() -> None:
    text = ops_generate.ASYNCAPI_PATH.read_text("utf-8")

    assert not re.search(r"(?i)password|secret|/work/|/home/", text)
