"""Issue 15, item 10: every delivery of one message is counted under one key."""

from __future__ import annotations

from worker.processing.solo_runs import message_key


def test_given_a_redelivery_then_the_broker_count_does_not_change_the_key() -> None:
    # Given a message as first delivered and as redelivered, with the broker's count added
    first = message_key(b'{"eventId": "a"}', {"ce-id": "1"})
    again = message_key(b'{"eventId": "a"}', {"ce-id": "1", "x-delivery-count": 3})
    # Then both deliveries share one key
    assert first == again


def test_given_messages_differing_only_in_a_header_then_their_keys_differ() -> None:
    # Given two binary CloudEvents with the same data and different ids
    one = message_key(b"{}", {"ce-id": "1"})
    other = message_key(b"{}", {"ce-id": "2"})
    # Then each is counted apart
    assert one != other
