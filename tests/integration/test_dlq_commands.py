"""``ccsync dlq`` against a real broker, no worker running: what each command shows and changes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.integration.test_dlq_support import (
    TENANT,
    Seed,
    ccsync,
    depth,
    fresh_queues,
    json_lines,
    keep,
    seed_for_event,
    store_dead_letters,
    stored,
    take_replayed,
    waiting,
)
from worker.amqp.event_publishing import Encoding
from worker.cli import main
from worker.constants import BACKFILL_QUEUE, EVENTS_QUEUE
from worker.dead_letter_queue.replay import REPLAYED_LIVE
from worker.processing.dead_letters import DeadLetter

pytestmark = pytest.mark.usefixtures("clean_environment")

NOW = datetime.now(UTC).replace(microsecond=0)
CONTRACT_KEYS = {
    "eventId",
    "tenant",
    "customerId",
    "resellerId",
    "reason",
    "status",
    "error",
    "attempts",
    "correlationId",
    "deadLetteredAt",
}
#: What the store adds: the dead letter's id (``dlq show``) and what became of it.
STORE_KEYS = {"id", "state", "settledAt", "settledBy", "job"}
CUSTOMER = str(uuid.uuid4())


@pytest.fixture
def seeds(broker_url: str) -> list[Seed]:
    """Four dead letters of four kinds, two hours apart from the oldest to the newest."""
    fresh_queues(broker_url)
    rejected = seed_for_event(
        "api-rejected",
        status=404,
        error=f"HTTP 404; NotFound; Customer {CUSTOMER} was not found.",
        customer=CUSTOMER,
        tenant="other.example",
        at=NOW - timedelta(hours=2),
    )
    exhausted = seed_for_event("retries-exhausted", status=503, at=NOW - timedelta(hours=1))
    binary = seed_for_event(
        "retries-exhausted",
        status=503,
        encoding=Encoding.BINARY,
        at=NOW - timedelta(minutes=30),
    )
    garbage = Seed(
        body=b"\xff\xfe not an event \x00",
        content_type="application/octet-stream",
        headers={"producer-trace": "t-1"},
        letter=DeadLetter("invalid-event", "body is not UTF-8 (byte 0)", attempts=0),
        at=NOW,
    )
    chosen = [rejected, exhausted, binary, garbage]
    store_dead_letters(broker_url, chosen)
    return chosen


def test_list_json_gives_the_contract_keys_and_removes_nothing(
    broker_url: str, seeds: list[Seed]
) -> None:
    # When listing as JSON
    result = ccsync(broker_url, "dlq", "list", "--json")
    # Then one object per dead letter, the oldest first, with exactly the contract's keys
    assert result.exit_code == 0, result.output
    rows = json_lines(result)
    assert [row["eventId"] for row in rows] == [seed.event_id for seed in seeds[:3]] + [None]
    assert all(set(row) == CONTRACT_KEYS | STORE_KEYS for row in rows)
    assert {row["state"] for row in rows} == {"waiting"}
    first = rows[0]
    assert first["tenant"] == "other.example"
    assert first["customerId"] == CUSTOMER
    assert first["reason"] == "api-rejected"
    assert first["status"] == 404
    assert first["attempts"] == 1
    assert first["correlationId"] == seeds[0].letter.correlation_id
    assert first["deadLetteredAt"] == (NOW - timedelta(hours=2)).isoformat()
    # And the binary CloudEvent shows its fields too (body = data, id in the headers)
    assert rows[2]["customerId"] is not None and rows[2]["tenant"] == TENANT
    # And nothing left the store
    assert waiting() == 4


def test_list_table_is_readable(broker_url: str, seeds: list[Seed]) -> None:
    result = ccsync(broker_url, "dlq", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "DEAD-LETTERED",
        "AT",
        "REASON",
        "STATUS",
        "TRIES",
        "EVENT",
        "ID",
        "ERROR",
    ]
    assert len(lines) == 6 and lines[-1] == "1-4 of 4 dead letter(s)"
    assert "api-rejected" in lines[1] and "404" in lines[1] and str(seeds[0].event_id) in lines[1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--reason", "retries-exhausted"], [1, 2]),
        (["--reason", "invalid-event", "--reason", "api-rejected"], [0, 3]),
        (["--status", "404"], [0]),
        (["--customer", CUSTOMER.upper()], [0]),
        (["--tenant", "other.example"], [0]),
        (["--tenant", TENANT], [1, 2]),
        (["--since", (NOW - timedelta(minutes=45)).isoformat()], [2, 3]),
        (["--until", (NOW - timedelta(minutes=45)).isoformat()], [0, 1]),
        (
            ["--reason", "retries-exhausted", "--since", (NOW - timedelta(hours=1)).isoformat()],
            [1, 2],
        ),
        (["--limit", "2"], [0, 1]),
        (["--reason", "retries-exhausted", "--limit", "1"], [1]),
    ],
)
def test_filters_select_the_dead_letters_they_name(
    broker_url: str, seeds: list[Seed], options: list[str], expected: list[int]
) -> None:
    result = ccsync(broker_url, "dlq", "list", "--json", *options)
    assert result.exit_code == 0, result.output
    assert [row["eventId"] for row in json_lines(result)] == [seeds[i].event_id for i in expected]


def test_event_id_filter(broker_url: str, seeds: list[Seed]) -> None:
    result = ccsync(broker_url, "dlq", "list", "--json", "--event-id", str(seeds[2].event_id))
    assert [row["eventId"] for row in json_lines(result)] == [seeds[2].event_id]


def test_stats_group_by_reason_status_and_error_type(broker_url: str, seeds: list[Seed]) -> None:
    # When asking for stats
    result = ccsync(broker_url, "dlq", "stats", "--json")
    # Then the two 503s are one group with their oldest and newest times
    assert result.exit_code == 0, result.output
    groups = json_lines(result)
    assert groups[0] == {
        "reason": "retries-exhausted",
        "status": 503,
        "errorType": "ServiceUnavailable",
        "count": 2,
        "oldest": (NOW - timedelta(hours=1)).isoformat(),
        "newest": (NOW - timedelta(minutes=30)).isoformat(),
    }
    assert {(g["reason"], g["status"], g["errorType"], g["count"]) for g in groups[1:]} == {
        ("api-rejected", 404, "NotFound", 1),
        ("invalid-event", None, None, 1),
    }
    # And the table says the same for people, filters applying
    table = ccsync(broker_url, "dlq", "stats", "--reason", "retries-exhausted")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[-1] == "2 dead letter(s) in 1 group(s)"
    assert waiting() == 4


def test_purge_asks_first_and_removes_only_what_matches(broker_url: str, seeds: list[Seed]) -> None:
    # When the operator declines the prompt
    declined = ccsync(broker_url, "dlq", "purge", "--reason", "retries-exhausted", input="n\n")
    # Then nothing is removed and the exit status says so
    assert declined.exit_code != 0
    assert "Delete 2 dead letter(s) (--reason retries-exhausted)?" in declined.output
    assert waiting() == 4
    # When a dry run is asked for
    dry = ccsync(broker_url, "dlq", "purge", "--reason", "retries-exhausted", "--dry-run")
    assert dry.exit_code == 0 and "dry run: 2 of 4" in dry.stdout
    assert waiting() == 4
    # When confirmed with --yes
    done = ccsync(broker_url, "dlq", "purge", "--reason", "retries-exhausted", "--yes")
    # Then exactly those two are gone; the others are untouched, bytes and all
    assert done.exit_code == 0 and "purged 2 dead letter(s)" in done.stdout
    assert [record.body for record in stored()] == [seeds[0].body, seeds[3].body]
    # And they are kept as history, purged
    purged = ccsync(broker_url, "dlq", "list", "--json", "--state", "purged")
    rows = json_lines(purged)
    assert [row["eventId"] for row in rows] == [seeds[1].event_id, seeds[2].event_id]
    assert {row["state"] for row in rows} == {"purged"}


def test_export_remove_and_import_round_trip(
    broker_url: str, seeds: list[Seed], tmp_path: Path
) -> None:
    before = stored()
    archive = tmp_path / "dead-letters.jsonl"
    # When exported with --remove
    exported = ccsync(broker_url, "dlq", "export", str(archive), "--remove")
    # Then the file holds one line each (body in base64) and the queue is empty
    assert exported.exit_code == 0, exported.output
    assert "exported 4 dead letter(s), marked 4 purged" in exported.stdout
    lines = [json.loads(line) for line in archive.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4
    assert base64.b64decode(lines[3]["body"]) == b"\xff\xfe not an event \x00"
    assert waiting() == 0
    # And a second export never overwrites the archive
    again = ccsync(broker_url, "dlq", "export", str(archive), "--remove")
    assert again.exit_code == 1
    assert again.output.strip() == f"Error: {archive} exists; export writes only new files"
    assert len(archive.read_text(encoding="utf-8").splitlines()) == 4
    # When a dry run of the import is asked for, it reads the file and publishes nothing
    dry = ccsync(
        broker_url, "dlq", "import", str(archive), "--reason", "invalid-event", "--dry-run"
    )
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "would import (no eventId)",
        "dry run: 1 of 4 dead letter(s) match",
    ]
    assert waiting() == 0
    # When imported again
    imported = ccsync(broker_url, "dlq", "import", str(archive))
    # Then the queue holds the same dead letters: bytes, content types and headers
    assert imported.exit_code == 0, imported.output
    assert "imported 4 of 4" in imported.stdout
    keep(broker_url)
    after = stored()
    assert [(r.body, r.content_type, dict(r.original_headers)) for r in after] == [
        (r.body, r.content_type, dict(r.original_headers)) for r in before
    ]
    # And a filtered import takes only what matches
    ccsync(broker_url, "dlq", "purge", "--yes")
    partial = ccsync(broker_url, "dlq", "import", str(archive), "--reason", "invalid-event")
    assert "imported 1 of 1" in partial.stdout
    keep(broker_url)
    assert [r.reason for r in stored()] == ["invalid-event"]


def test_replay_publishes_the_original_message_and_keeps_the_rest(
    broker_url: str, seeds: list[Seed]
) -> None:
    # When the 503s are replayed (no worker is running, so they wait in ccsync.events)
    result = ccsync(broker_url, "dlq", "replay", "--reason", "retries-exhausted", "--yes")
    assert result.exit_code == 0, result.output
    assert "replayed 2 of 2" in result.stdout
    # Then each went to customer-events as the producer sent it, stamped as a replay
    events = take_replayed(broker_url)
    assert [event.event_id for event in events] == [seeds[1].event_id, seeds[2].event_id]
    for event, seed in zip(events, seeds[1:3], strict=True):
        assert event.body == seed.body
        assert event.content_type == seed.content_type
        assert {k: v for k, v in event.headers.items() if not k.startswith("x-")} == seed.headers
        assert event.headers["x-ccsync-replay-count"] == 1
        replayed_at = datetime.fromisoformat(event.headers["x-ccsync-replayed-at"])
        assert abs((replayed_at - datetime.now(UTC)).total_seconds()) < 60
        assert not {k for k in event.headers if k.startswith("x-ccsync-")} - {
            "x-ccsync-replay-count",
            "x-ccsync-replayed-at",
        }
    # And the binary CloudEvent kept its cloudEvents:* headers (its id among them)
    assert events[1].headers["cloudEvents:id"] == seeds[2].event_id
    # And what did not match is still dead-lettered
    assert [record.event_id for record in stored()] == [seeds[0].event_id, None]


def test_replay_and_purge_json_give_the_outcome_as_one_object(
    broker_url: str, seeds: list[Seed]
) -> None:
    replayed = ccsync(broker_url, "dlq", "replay", "--reason", "api-rejected", "--yes", "--json")
    purged = ccsync(broker_url, "dlq", "purge", "--reason", "invalid-event", "--yes", "--json")
    dry = ccsync(broker_url, "dlq", "purge", "--dry-run", "--json")

    assert replayed.exit_code == 0, replayed.output
    outcome = json.loads(replayed.stdout)
    assert (outcome["replayed"], outcome["matched"], outcome["failed"]) == (1, 1, 0)
    assert outcome["event_ids"] == [seeds[0].event_id] and outcome["rate"] >= 0
    assert json.loads(purged.stdout) | {"examined": 0} == {
        "examined": 0,
        "matched": 1,
        "purged": 1,
        "dry_run": False,
        "event_ids": [None],
    }
    assert json.loads(dry.stdout)["matched"] == 2 and json.loads(dry.stdout)["dry_run"] is True
    assert waiting() == 2


def test_replay_asks_before_a_bulk_replay(broker_url: str, seeds: list[Seed]) -> None:
    declined = ccsync(broker_url, "dlq", "replay", input="n\n")
    assert declined.exit_code != 0
    assert "Replay 4 dead letter(s) (no filter: every dead letter)?" in declined.output
    assert waiting() == 4
    assert take_replayed(broker_url) == []


def test_a_second_replay_counts_on(broker_url: str, seeds: list[Seed]) -> None:
    # Given an event replayed once that failed again (dead-lettered keeping the replay headers)
    event_id = str(seeds[1].event_id)
    ccsync(broker_url, "dlq", "replay", "--event-id", event_id)
    (event,) = take_replayed(broker_url)
    again = Seed(event.body, event.content_type, event.headers, seeds[1].letter, NOW)
    ccsync(broker_url, "dlq", "purge", "--yes")
    store_dead_letters(broker_url, [again])
    # When replayed again
    result = ccsync(broker_url, "dlq", "replay", "--event-id", event_id)
    # Then the replay count goes on from where it was
    assert result.exit_code == 0, result.output
    (second,) = take_replayed(broker_url)
    assert second.headers["x-ccsync-replay-count"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--set", "internalIdentifier=x"], "exactly one --event-id"),
        (["replay", "--event-id", "a", "--event-id", "b", "--set", "tenant=x"], "exactly one"),
        (["replay", "--event-id", "a", "--set", "customerId=x"], "only internalIdentifier"),
        (["list", "--since", "last tuesday"], "not an ISO timestamp"),
        (["replay", "--rate", "0", "--yes"], "'--rate': 0.0 is not in the range x>0"),
        (["list", "--customer", "not-a-uuid"], "'not-a-uuid' is not a valid UUID"),
    ],
)
def test_bad_options_fail_with_a_reason_and_change_nothing(
    broker_url: str, seeds: list[Seed], args: list[str], message: str
) -> None:
    result = ccsync(broker_url, "dlq", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert waiting() == 4


def test_replay_of_an_unknown_event_id_fails(broker_url: str, seeds: list[Seed]) -> None:
    result = ccsync(broker_url, "dlq", "replay", "--event-id", "no-such-event")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: no dead letter matches --event-id no-such-event"
    )


def test_show_gives_a_dead_letter_and_its_history(broker_url: str, seeds: list[Seed]) -> None:
    # Given a dead letter replayed, which failed again
    event_id = str(seeds[1].event_id)
    ccsync(broker_url, "dlq", "replay", "--event-id", event_id)
    (event,) = take_replayed(broker_url)
    store_dead_letters(
        broker_url,
        [Seed(event.body, event.content_type, event.headers, seeds[1].letter, datetime.now(UTC))],
    )
    (row,) = json_lines(ccsync(broker_url, "dlq", "list", "--json", "--event-id", event_id))
    # When shown by the first characters of its id
    shown = ccsync(broker_url, "dlq", "show", row["id"][:12])
    # Then its history holds both dead-letterings and the replay between them
    assert shown.exit_code == 0, shown.output
    history = shown.stdout.split("history:\n", 1)[1].splitlines()
    assert [line.split()[2] for line in history] == ["dead-lettered", "replay", "dead-lettered"]
    assert "published, confirmed" in history[1]
    # And an unknown id is one line and a failure
    unknown = ccsync(broker_url, "dlq", "show", "0" * 12)
    assert unknown.exit_code == 1 and "no dead letter has the id" in unknown.output


def test_an_unreachable_store_is_one_line_and_a_failure() -> None:
    result = CliRunner().invoke(
        main,
        ["dlq", "list"],
        env={"CCSYNC_DLQ_STORE_URL": "postgresql+psycopg://ccsync:secret@127.0.0.1:9/none"},
    )
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: the dead-letter store is unreachable")


def test_an_unreachable_broker_is_one_line_and_a_failure(tmp_path: Path) -> None:
    # Given a broker URL where nothing listens (port 9 is discard, closed here)
    result = CliRunner().invoke(
        main,
        ["dlq", "replay", "--event-id", "x"],
        env={
            "CCSYNC_BROKER_URL": "amqp://guest:secret@127.0.0.1:9//",
            "CCSYNC_BROKER_CONNECT_TIMEOUT": "2",
        },
    )
    # Then, once the connect timeout has passed, exit 1 with one line naming the broker, the
    # password masked
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(
        "Error: cannot reach the broker at amqp://guest:**@127.0.0.1:9// within 2 s"
    )
    assert "secret" not in line


def test_a_mass_replay_sends_all_but_its_first_ten_to_the_backfill_lane(broker_url: str) -> None:
    # Given twelve dead letters in the store
    fresh_queues(broker_url)
    store_dead_letters(
        broker_url,
        [seed_for_event("retries-exhausted", status=503, at=NOW) for _ in range(12)],
    )

    # When all of them are replayed (no worker runs, so they wait in the lanes)
    result = ccsync(broker_url, "dlq", "replay", "--yes")

    # Then the first ten wait on the live lane, and the other two behind live traffic
    assert result.exit_code == 0, result.output
    assert depth(broker_url, EVENTS_QUEUE) == REPLAYED_LIVE
    assert depth(broker_url, BACKFILL_QUEUE) == 2
