"""The benchmark's arithmetic: which runs are compared, and how rounds become one ratio."""

from __future__ import annotations

from typing import Any

from bench.__main__ import schedule
from bench.report import checks, median_ratio, throughput_ratios


def run(system: str, latency: int, number: int, throughput: float) -> dict[str, Any]:
    return {
        "system": system,
        "latency_ms": latency,
        "round": number,
        "throughput": throughput,
        "peak_rss_mb": 70.0,
        "p50_ms": 1.0,
    }


def test_rounds_alternate_systems_and_naive_celery_runs_once_per_latency() -> None:
    assert schedule([0, 100], 2, ["ccsync", "bare", "naive"]) == [
        (0, 1, "ccsync"),
        (0, 1, "bare"),
        (0, 1, "naive"),
        (0, 2, "ccsync"),
        (0, 2, "bare"),
        (100, 1, "ccsync"),
        (100, 1, "bare"),
        (100, 1, "naive"),
        (100, 2, "ccsync"),
        (100, 2, "bare"),
    ]


def test_each_round_is_compared_with_its_own_bare_run_and_the_median_decides() -> None:
    runs = [
        run("ccsync", 100, 1, 300.0),
        run("bare", 100, 1, 310.0),
        run("ccsync", 100, 2, 309.0),
        run("bare", 100, 2, 300.0),
        run("ccsync", 100, 3, 305.0),
        run("bare", 100, 3, 304.0),
    ]

    assert throughput_ratios(runs, "bare", 100) == [300 / 310, 309 / 300, 305 / 304]
    assert median_ratio(runs, "bare", 100) == 305 / 304
    (bare_check,) = [check for check in checks(runs) if "bare at 100" in check[0]]
    assert bare_check[2] is True


def test_a_system_measured_once_is_compared_with_every_round_of_ccsync() -> None:
    runs = [
        run("ccsync", 100, 1, 300.0),
        run("ccsync", 100, 2, 280.0),
        run("ccsync", 100, 3, 290.0),
        run("naive", 100, 1, 20.0),
    ]

    assert throughput_ratios(runs, "naive", 100) == [15.0, 14.0, 14.5]
    assert median_ratio(runs, "naive", 100) == 14.5


def test_an_even_number_of_rounds_takes_the_mean_of_the_middle_two() -> None:
    runs = [
        run("ccsync", 0, 1, 100.0),
        run("bare", 0, 1, 200.0),
        run("ccsync", 0, 2, 300.0),
        run("bare", 0, 2, 200.0),
    ]

    assert median_ratio(runs, "bare", 0) == 1.0
