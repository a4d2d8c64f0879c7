"""The API's rate budget per tenant (``RateBudget``), on the real local Redis: two budgets stand
for two workers of one fleet."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support import REDIS_URL
from worker.exceptions import RateLimited
from worker.processing.budget import LONGEST_WAIT_SECONDS, RATE_HEADROOM, RateBudget

TENANT = "portal.example.com"


@pytest.fixture
def make_budget(ledger_prefix: str) -> Iterator[Callable[[float | None], RateBudget]]:
    """Budgets on this test's key space, each over a client of its own, as workers have."""
    clients: list[redis.Redis] = []

    def make(per_second: float | None) -> RateBudget:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
        clients.append(client)
        return RateBudget(client, per_second=per_second, prefix=ledger_prefix)

    yield make
    for client in clients:
        client.close()


def waits(budget: RateBudget, count: int, tenant: str = TENANT) -> list[float]:
    return [r.wait_seconds for r in budget.reserve_all([tenant] * count)]


def test_given_100_a_second_then_the_calls_of_one_round_trip_are_spaced_evenly_within_it(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    budget = make_budget(100)

    spaced = waits(budget, 5)

    assert spaced[0] < 0.005
    for earlier, later in itertools.pairwise(spaced):
        assert later - earlier == pytest.approx(0.010 / RATE_HEADROOM, abs=0.002)


def test_given_two_workers_then_the_second_reserves_after_the_first(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    first, second = make_budget(50), make_budget(50)

    waits(first, 10)
    [after] = waits(second, 1)

    assert after == pytest.approx(10 / (50 * RATE_HEADROOM), abs=0.02)


def test_given_tenants_apart_then_each_has_its_own_budget_whatever_its_case(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    budget = make_budget(10)

    waits(budget, 3, "Portal.Example.com")
    [other] = waits(budget, 1, "other.example.com")
    [same] = waits(budget, 1, TENANT)

    assert other < 0.005
    assert same == pytest.approx(3 / (10 * RATE_HEADROOM), abs=0.02)


def test_given_a_wait_beyond_the_longest_then_nothing_is_reserved_and_the_event_is_deferred(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    rate = 10
    budget = make_budget(rate)
    waits(budget, int(LONGEST_WAIT_SECONDS * rate * RATE_HEADROOM) + 1)

    [too_long] = budget.reserve_all([TENANT])
    [again] = budget.reserve_all([TENANT])

    assert not too_long.reserved
    assert too_long.wait_seconds > LONGEST_WAIT_SECONDS
    assert again.wait_seconds == pytest.approx(too_long.wait_seconds, abs=0.05)
    with pytest.raises(RateLimited) as refused:
        budget.wait(TENANT, sleep=lambda seconds: None)
    assert refused.value.status is None
    assert refused.value.retry_after is not None
    assert refused.value.retry_after > LONGEST_WAIT_SECONDS


def test_given_no_rate_and_no_429_then_no_call_reserves_anything(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    budget = make_budget(None)
    slept: list[float] = []

    budget.wait(TENANT, sleep=slept.append)

    assert not budget.applies(TENANT)
    assert slept == []


def test_given_no_rate_when_one_worker_gets_a_429_then_the_fleet_waits_and_one_call_goes_first(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    refused, other = make_budget(None), make_budget(None)
    for _ in range(50):
        refused.answered(TENANT)

    refused.refused(TENANT, 2.0)
    other.refresh()

    assert refused.applies(TENANT)
    assert refused.paused_for(TENANT) == pytest.approx(2.0, abs=0.1)
    assert other.applies(TENANT)
    # Learned: 80 % of the 50 calls a second answered before the 429.
    first, second = waits(other, 2)
    assert first == pytest.approx(2.0, abs=0.1)
    assert second - first == pytest.approx(1 / 40, abs=0.002)


def test_given_429s_of_one_pause_then_the_learned_rate_drops_once(
    make_budget: Callable[[float | None], RateBudget],
    ledger_prefix: str,
) -> None:
    one, two = make_budget(None), make_budget(None)
    for _ in range(100):
        one.answered(TENANT)

    one.refused(TENANT, 1.0)
    two.refused(TENANT, 1.0)

    client = redis.Redis.from_url(REDIS_URL)
    try:
        [rate_key] = client.keys(f"{ledger_prefix}:budget-rate:*")
        assert float(client.hget(rate_key, "r") or 0) == pytest.approx(80.0)
    finally:
        client.close()


def test_given_a_429_this_worker_got_then_calls_past_their_wait_are_not_made(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    budget = make_budget(None)
    budget.check_unpaused(TENANT)

    budget.seen_refusal(TENANT, 1.0)

    with pytest.raises(RateLimited) as held:
        budget.check_unpaused(TENANT.upper())
    assert held.value.status is None  # not the API's answer: no attempt is spent
    assert held.value.retry_after == pytest.approx(1.0, abs=0.05)
    budget.check_unpaused("other.example.com")


def test_given_calls_whose_slots_were_overslept_then_they_leave_one_interval_apart(
    make_budget: Callable[[float | None], RateBudget],
) -> None:
    budget = make_budget(100)

    late = [budget.spaced(TENANT) for _ in range(4)]

    assert late[0] == 0.0
    for earlier, later in itertools.pairwise(late):
        assert later - earlier == pytest.approx(0.010, abs=0.001)
    assert make_budget(None).spaced(TENANT) == 0.0
