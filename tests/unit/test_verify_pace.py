"""``ccsync verify``'s pace: at most N calls a second, spread evenly."""

from __future__ import annotations

import pytest

from worker.ops.verify import Pace


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_given_a_rate_then_calls_are_spread_evenly() -> None:
    clock = FakeClock()
    pace = Pace(4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        pace.wait()
    assert clock.slept == [0.25] * 4


def test_given_calls_slower_than_the_rate_then_nobody_waits() -> None:
    clock = FakeClock()
    pace = Pace(4, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        pace.wait()
        clock.now += 1
    assert clock.slept == []


def test_given_no_rate_then_nobody_waits_and_a_rate_must_be_positive() -> None:
    clock = FakeClock()
    pace = Pace(None, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        pace.wait()
    assert clock.slept == []
    with pytest.raises(ValueError):
        Pace(0)
