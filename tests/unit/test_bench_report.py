"""The benchmark's arithmetic: which runs are compared, and how rounds become one ratio."""

from __future__ import annotations

import math
from typing import Any

from bench.__main__ import schedule
from bench.children import patch_arguments
from bench.harness import arrival_shape
from bench.report import checks, median, ratio_lines, round_ratios
from worker import correlation_id


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

    assert round_ratios(runs, other="bare", latency=100) == [300 / 310, 309 / 300, 305 / 304]
    assert median(round_ratios(runs, other="bare", latency=100)) == 305 / 304
    (bare_check,) = [check for check in checks(runs) if "bare (32 in flight) at 100" in check[0]]
    assert bare_check[2] is False  # the target is 2.5x


def test_a_latency_is_compared_with_0_ms_round_by_round_and_two_processes_with_one() -> None:
    runs = [
        run("ccsync", 0, 1, 1000.0),
        run("ccsync", 100, 1, 850.0),
        run("ccsync", 0, 2, 900.0),
        run("ccsync", 100, 2, 810.0),
        run("ccsync-32", 100, 1, 300.0),
        run("ccsync-2x32", 100, 1, 590.0),
    ]

    assert round_ratios(runs, other="ccsync", latency=100, other_latency=0) == [0.85, 0.9]
    assert (
        median(round_ratios(runs, system="ccsync-2x32", other="ccsync-32", latency=100))
        == 590 / 300
    )
    met = {what: ok for what, _, ok in checks(runs)}
    assert met["ccsync at 100 ms >= 0.8x its own 0 ms throughput"] is True
    assert met["two ccsync processes >= 1.8x one at 100 ms, 32 in flight each"] is True
    assert met["ccsync at 300 ms >= 0.6x its own 0 ms throughput"] is None


def test_the_scale_out_pair_runs_only_at_its_latencies() -> None:
    assert schedule([0, 100], 1, ["ccsync", "ccsync-2x32"], only_at={"ccsync-2x32": [100]}) == [
        (0, 1, "ccsync"),
        (100, 1, "ccsync"),
        (100, 1, "ccsync-2x32"),
    ]


def test_a_system_measured_once_is_compared_with_every_round_of_ccsync() -> None:
    runs = [
        run("ccsync", 100, 1, 300.0),
        run("ccsync", 100, 2, 280.0),
        run("ccsync", 100, 3, 290.0),
        run("naive", 100, 1, 20.0),
    ]

    assert round_ratios(runs, other="naive", latency=100) == [15.0, 14.0, 14.5]
    assert median(round_ratios(runs, other="naive", latency=100)) == 14.5


def test_an_even_number_of_rounds_takes_the_mean_of_the_middle_two() -> None:
    runs = [
        run("ccsync", 0, 1, 100.0),
        run("bare", 0, 1, 200.0),
        run("ccsync", 0, 2, 300.0),
        run("bare", 0, 2, 200.0),
    ]

    assert median(round_ratios(runs, other="bare", latency=0)) == 1.0

    (line,) = ratio_lines(runs)
    # The runs printed beside it are the lower of the two middle ones, and it says so.
    assert "lower-middle runs 100.0 vs 200.0 events/s" in line


def test_the_gevent_variant_of_bare_gets_its_own_ratio_line_when_it_ran() -> None:
    runs = [
        run("ccsync", 100, 1, 310.0),
        run("bare", 100, 1, 310.0),
        run("bare-gevent", 100, 1, 300.0),
    ]

    assert [line.split(":")[0] for line in ratio_lines(runs)] == [
        "ccsync/bare at 100 ms",
        "ccsync/bare-gevent at 100 ms",
    ]


def test_the_ramp_ends_when_every_thread_has_called_and_the_steady_rate_skips_both_ends() -> None:
    # Given 4 threads, a slow start (calls 2 to 4 arrive late) and then one call every 10 ms
    arrivals = [100.01, 100.05, 100.07, 100.09] + [100.09 + 0.01 * n for n in range(1, 97)]

    # When the run is reduced to its shape
    ramp_ms, steady = arrival_shape(100.0, arrivals, slots=4)

    # Then the ramp is first publish to the fourth arrival, and the steady rate is the cadence
    assert ramp_ms == 90.0
    assert steady == 100.0


def test_a_run_too_short_to_have_a_shape_has_none() -> None:
    ramp_ms, steady = arrival_shape(0.0, [0.1, 0.2], slots=32)

    assert math.isnan(ramp_ms)
    assert math.isnan(steady)


def test_the_baselines_send_the_correlation_id_ccsync_sends() -> None:
    event = {"eventId": "e-1", "customerId": "c-1", "internalIdentifier": "X", "resellerId": None}

    path, body, headers = patch_arguments(event, token="t", default_tenant="tenant-a")

    assert path == "/v1/Customers/c-1/internal-identifier"
    assert body == {"internalIdentifier": "X", "resellerId": None}
    assert headers["X-Correlation-Id"] == str(correlation_id("tenant-a", "e-1"))
