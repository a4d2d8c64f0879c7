"""The triage view: grouping by reason, HTTP status and API error type, oldest and newest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.dead_letter_queue.stats import error_type, group_stats

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def letter(
    reason: str, status: int | None, error: str, minutes: int | None = 0
) -> DeadLetterRecord:
    headers: dict[str, object] = {"x-ccsync-reason": reason, "x-ccsync-error": error}
    if status is not None:
        headers["x-ccsync-status"] = status
    if minutes is not None:
        headers["x-ccsync-dead-lettered-at"] = (T0 + timedelta(minutes=minutes)).isoformat()
    return DeadLetterRecord(1, b"{}", "application/json", headers)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("HTTP 404; NotFound; Customer 1 was not found.", "NotFound"),
        ("HTTP 400; ValidationError; invalid; InternalIdentifier: Too long.", "ValidationError"),
        ("HTTP 503", None),
        ("HTTP 503;", None),
        ("no answer from CloudCockpit: ConnectTimeout", None),
        ("customerId: Input should be a valid UUID", None),
        ("HTTP 4040; x", None),
    ],
)
def test_error_type_is_the_second_part_of_an_http_error(error: str, expected: str | None) -> None:
    assert error_type(error) == expected


def test_groups_count_by_reason_status_and_error_type_with_oldest_and_newest() -> None:
    # Given dead letters from two API failures, a transport failure and invalid events
    letters = [
        letter("api-rejected", 404, "HTTP 404; NotFound; Customer a was not found.", 5),
        letter("api-rejected", 404, "HTTP 404; NotFound; Customer b was not found.", 1),
        letter("api-rejected", 404, "HTTP 404; NotFound; Customer c was not found.", 9),
        letter("api-rejected", 400, "HTTP 400; ValidationError; bad", 3),
        letter("retries-exhausted", 503, "HTTP 503; ServiceUnavailable; down", 2),
        letter("retries-exhausted", 503, "HTTP 503; ServiceUnavailable; down", 4),
        letter("retries-exhausted", None, "no answer from CloudCockpit: ReadTimeout", 0),
        letter("invalid-event", None, "internalIdentifier: Field required", None),
    ]
    # When grouped
    groups = [group.to_json() for group in group_stats(letters)]
    # Then each (reason, status, error type) is one group, the largest first
    assert groups[0] == {
        "reason": "api-rejected",
        "status": 404,
        "errorType": "NotFound",
        "count": 3,
        "oldest": (T0 + timedelta(minutes=1)).isoformat(),
        "newest": (T0 + timedelta(minutes=9)).isoformat(),
    }
    assert groups[1]["errorType"] == "ServiceUnavailable"
    assert (groups[1]["count"], groups[1]["oldest"], groups[1]["newest"]) == (
        2,
        (T0 + timedelta(minutes=2)).isoformat(),
        (T0 + timedelta(minutes=4)).isoformat(),
    )
    keys = {(g["reason"], g["status"], g["errorType"]): g["count"] for g in groups}
    assert keys == {
        ("api-rejected", 404, "NotFound"): 3,
        ("retries-exhausted", 503, "ServiceUnavailable"): 2,
        ("api-rejected", 400, "ValidationError"): 1,
        ("retries-exhausted", None, None): 1,
        ("invalid-event", None, None): 1,
    }
    # And a group whose dead letters carry no date says so rather than inventing one
    undated = next(g for g in groups if g["reason"] == "invalid-event")
    assert undated["oldest"] is None and undated["newest"] is None
    # And among groups of one, the one waiting longest comes first, the undated last
    assert [g["reason"] for g in groups[2:]] == [
        "retries-exhausted",
        "api-rejected",
        "invalid-event",
    ]


def test_no_dead_letters_no_groups() -> None:
    assert group_stats([]) == []
