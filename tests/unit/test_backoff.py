"""The retry policy of CCSYNC_RETRY_DELAYS: delays, jitter bounds, attempts, Retry-After."""

from __future__ import annotations

import random

import pytest

from worker.exceptions import ApiUnavailable, RateLimited
from worker.processing.backoff import RetryPolicy

DELAYS = (1.0, 2.0, 3.0)
FAILURE = ApiUnavailable("HTTP 503", 503)


@pytest.mark.parametrize(("attempt", "base"), [(1, 1.0), (2, 2.0), (3, 3.0)])
@pytest.mark.parametrize("seed", range(20))
def test_given_jitter_0_2_then_each_delay_lies_between_the_base_and_1_2_times_it(
    attempt: int, base: float, seed: int
) -> None:
    delay = RetryPolicy(DELAYS, jitter=0.2).delay_after(attempt, FAILURE, random.Random(seed))

    assert delay is not None
    assert base <= delay <= base * 1.2


def test_given_jitter_then_delays_of_one_attempt_are_spread_not_identical() -> None:
    policy = RetryPolicy(DELAYS, jitter=0.2)
    rng = random.Random(7)

    delays = [policy.delay_after(1, FAILURE, rng) for _ in range(50)]

    assert len(set(delays)) > 40


def test_given_the_same_seed_then_the_same_delays() -> None:
    policy = RetryPolicy(DELAYS, jitter=0.2)

    first = [policy.delay_after(n, FAILURE, random.Random(3)) for n in (1, 2, 3)]
    second = [policy.delay_after(n, FAILURE, random.Random(3)) for n in (1, 2, 3)]

    assert first == second


def test_given_no_jitter_then_the_delays_are_exactly_the_configured_ones() -> None:
    policy = RetryPolicy(DELAYS, jitter=0.0)
    rng = random.Random(1)

    assert [policy.delay_after(n, FAILURE, rng) for n in (1, 2, 3)] == list(DELAYS)


@pytest.mark.parametrize(("delays", "attempts"), [((), 1), ((5.0,), 2), (DELAYS, 4)])
def test_max_attempts_is_the_number_of_delays_plus_one(
    delays: tuple[float, ...], attempts: int
) -> None:
    assert RetryPolicy(delays).max_attempts == attempts


@pytest.mark.parametrize("attempt", [4, 5, 100])
def test_given_the_last_attempt_failed_then_no_delay_is_left(attempt: int) -> None:
    assert RetryPolicy(DELAYS).delay_after(attempt, FAILURE, random.Random(0)) is None


def test_given_no_delays_then_the_first_failure_is_final() -> None:
    assert RetryPolicy(()).delay_after(1, FAILURE, random.Random(0)) is None


def test_given_retry_after_longer_than_the_delay_then_the_delay_is_raised_to_it() -> None:
    failure = RateLimited("HTTP 429", 429, retry_after=5.0)

    assert RetryPolicy((1.0,), jitter=0.2).delay_after(1, failure, random.Random(0)) == 5.0


def test_given_retry_after_shorter_than_the_delay_then_the_delay_is_kept() -> None:
    failure = RateLimited("HTTP 429", 429, retry_after=0.5)

    delay = RetryPolicy((10.0,), jitter=0.2).delay_after(1, failure, random.Random(0))

    assert delay is not None
    assert 10.0 <= delay <= 12.0


def test_given_retry_after_on_the_last_attempt_then_still_no_delay_is_left() -> None:
    failure = RateLimited("HTTP 429", 429, retry_after=5.0)

    assert RetryPolicy((1.0,)).delay_after(2, failure, random.Random(0)) is None
