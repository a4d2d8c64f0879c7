"""ops/asyncapi.yaml read by the reference AsyncAPI parser (@asyncapi/parser, through node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.integration.ops_node import ASYNCAPI_CHECK, run_node
from tools.generate_ops import ASYNCAPI_PATH
from worker.constants import BACKFILL_ROUTING_KEY, EVENT_ROUTING_KEY


def parse(path: Path) -> tuple[int, list[dict[str, Any]]]:
    result = run_node(ASYNCAPI_CHECK, "check.js", str(path))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the parser said nothing: {result.stderr}"
    return result.returncode, lines


def test_given_the_asyncapi_document_when_the_parser_reads_it_then_it_is_valid() -> None:
    status, lines = parse(ASYNCAPI_PATH)

    summary = lines[-1]
    diagnostics = [line for line in lines if "severity" in line]

    assert status == 0, lines
    assert summary["result"] == "valid"
    assert summary["version"] == "3.0.0"
    assert summary["channels"] == [EVENT_ROUTING_KEY, BACKFILL_ROUTING_KEY]
    assert sorted(summary["messages"]) == [
        "cloudEventBinary",
        "cloudEventStructured",
        "identifierChanged",
    ]
    # Only the note that a newer AsyncAPI exists: the contract asks for 3.0.
    assert {d["severity"] for d in diagnostics} <= {"information"}, diagnostics


def test_given_a_broken_document_when_the_parser_reads_it_then_it_fails(tmp_path: Path) -> None:
    """The check above can fail: a wrong operation action is refused."""
    document = yaml.safe_load(ASYNCAPI_PATH.read_text("utf-8"))
    document["operations"]["receiveIdentifierChanged"]["action"] = "listen"
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")

    status, lines = parse(broken)

    assert status == 1
    assert lines[-1]["result"] == "invalid"
    assert any(line.get("path", "").endswith("/action") for line in lines)
