"""``LoopHeartbeat``: what /livez answers as the worker's event loop beats, stops or reconnects."""

from __future__ import annotations

from worker.observability.endpoints import LoopHeartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_given_beats_within_the_threshold_then_live_and_past_it_not() -> None:
    clock = Clock()
    heartbeat = LoopHeartbeat(10, clock)

    clock.now += 9
    assert heartbeat.check().ok  # startup counts as a beat
    heartbeat.beat()
    clock.now += 10
    assert heartbeat.check().ok
    clock.now += 0.5
    answer = heartbeat.check()

    assert not answer.ok
    assert answer.text == "event loop last beat 10.5s ago (threshold 10s)"


def test_given_a_reconnection_then_live_until_the_next_beat() -> None:
    clock = Clock()
    heartbeat = LoopHeartbeat(10, clock)
    heartbeat.reconnecting()
    clock.now += 300

    assert heartbeat.check().ok
    heartbeat.beat()
    clock.now += 11
    assert not heartbeat.check().ok
