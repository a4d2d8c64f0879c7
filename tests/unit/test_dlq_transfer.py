"""Export/import lines and replay envelopes: what must survive a move, and what must not."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.dead_letter_queue.replay import replay_envelope, replay_headers
from worker.dead_letter_queue.transfer import read_lines, to_line
from worker.observability.redaction import Redaction
from worker.processing.dead_letters import json_safe_headers

NOW = datetime(2024, 5, 2, 8, 30, tzinfo=UTC)


def raw_record(body: bytes, content_type: str | None, headers: dict[str, Any]) -> DeadLetterRecord:
    return DeadLetterRecord(
        7, body, content_type, json_safe_headers(headers), "utf-8", raw_headers=headers
    )


def test_export_import_round_trip_keeps_bytes_content_type_and_typed_headers() -> None:
    # Given a dead letter whose body is not UTF-8 and whose headers hold every AMQP type
    headers: dict[str, Any] = {
        "x-ccsync-reason": "invalid-event",
        "x-ccsync-attempts": 0,
        "x-ccsync-dead-lettered-at": "2024-05-01T12:00:00+00:00",
        "cloudEvents:id": "evt-9",
        "producer-flag": True,
        "producer-ratio": 0.25,
        "producer-when": datetime(2024, 5, 1, 11, 0, tzinfo=UTC),
        "producer-raw": b"\x00\xff",
        "producer-amount": Decimal("12.50"),
        "producer-nested": {"list": [1, "two", {"deep": None}]},
        "x-death": [{"queue": "ccsync.events", "count": 1, "reason": "delivery_limit"}],
    }
    original = raw_record(b"\xff\xfe\x00 not json", "application/octet-stream", headers)
    # When exported to a line and imported back
    line = to_line(original, redaction=Redaction([]))
    (restored,) = read_lines(io.StringIO(line + "\n\n"))
    # Then body, properties and headers are what they were, types included
    assert restored.body == original.body
    assert restored.content_type == "application/octet-stream"
    assert restored.content_encoding == "utf-8"
    assert restored.raw_headers == headers
    assert restored.envelope().headers == headers
    # And the line is readable: one line, the operator's summary fields beside the payload
    assert "\n" not in line
    document = json.loads(line)
    assert document["eventId"] == "evt-9"
    assert document["reason"] == "invalid-event"
    assert document["deadLetteredAt"] == "2024-05-01T12:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"body": ""}', "line 2: not a ccsync-dead-letter/1 line"),
        ('{"format": "ccsync-dead-letter/1", "body": "!!"}', "line 2: body must be base64"),
        ("garbage", "line 2"),
    ],
)
def test_import_refuses_a_file_with_a_bad_line_before_publishing_anything(
    text: str, message: str
) -> None:
    good = to_line(raw_record(b"{}", "application/json", {}), redaction=Redaction([]))
    with pytest.raises(DeadLetterError, match=message):
        read_lines([good, text])


def test_replay_headers_drop_outcomes_and_broker_history_and_count_the_replay() -> None:
    # Given the headers of an event dead-lettered after one replay already
    headers: dict[str, Any] = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "evt-3",
        "traceparent": "00-abc-def-01",
        "x-ccsync-reason": "retries-exhausted",
        "x-ccsync-status": 503,
        "x-ccsync-error": "HTTP 503",
        "x-ccsync-attempts": 3,
        "x-ccsync-event-id": "evt-3",
        "x-ccsync-correlation-id": "c",
        "x-ccsync-first-attempt-at": "2024-05-01T00:00:00+00:00",
        "x-ccsync-dead-lettered-at": "2024-05-01T00:01:00+00:00",
        "x-ccsync-replayed-at": "2024-05-01T00:00:00+00:00",
        "x-ccsync-replay-count": 1,
        "x-death": [{"count": 1}],
        "x-first-death-queue": "ccsync.events",
        "x-delivery-count": 4,
    }
    # When made into replay headers
    replayed = replay_headers(headers, previous_replays=1, now=NOW)
    # Then only the producer's headers remain, stamped with this replay
    assert replayed == {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "evt-3",
        "traceparent": "00-abc-def-01",
        "x-ccsync-replayed-at": "2024-05-02T08:30:00+00:00",
        "x-ccsync-replay-count": 2,
    }


def test_replay_envelope_keeps_the_original_body_bytes_and_properties() -> None:
    body = b'{"eventId":"e1",  "odd spacing": true}'
    letter = raw_record(body, "application/json", {"x-ccsync-reason": "api-rejected"})
    envelope = replay_envelope(letter, now=NOW)
    assert envelope.body is body
    assert (envelope.content_type, envelope.content_encoding) == ("application/json", "utf-8")
    assert envelope.headers == {
        "x-ccsync-replayed-at": NOW.isoformat(),
        "x-ccsync-replay-count": 1,
    }
