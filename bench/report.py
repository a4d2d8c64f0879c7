"""The benchmark's output: a text table, the ratio lines, BENCHMARKS.md and a plot."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SYSTEM_ORDER = ("ccsync", "ccsync-32", "ccsync-2x32", "bare", "bare-gevent", "celery", "naive")
#: What ccsync is compared with in the ratio lines, in this order.
OTHERS = ("ccsync-32", "bare", "bare-gevent", "celery", "naive")
COLUMNS = (
    ("system", "system", "{}"),
    ("latency_ms", "latency ms", "{}"),
    ("round", "round", "{}"),
    ("concurrency", "concurrency", "{}"),
    ("completed", "events", "{}"),
    ("throughput", "events/s", "{:.1f}"),
    ("steady_throughput", "steady events/s", "{:.1f}"),
    ("ramp_ms", "ramp ms", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p99_ms", "p99 ms", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
    ("ready_rss_mb", "idle RSS MB", "{:.1f}"),
    ("worker_cpu_ms_per_event", "worker CPU ms/event", "{:.2f}"),
    ("broker_cpu_ms_per_event", "broker CPU ms/event", "{:.2f}"),
    ("redis_cpu_ms_per_event", "Redis CPU ms/event", "{:.2f}"),
    ("sandbox_cpu_ms_per_event", "sandbox CPU ms/event", "{:.2f}"),
    ("machine_cpu_pct", "machine CPU %", "{:.0f}"),
)

Run = Mapping[str, Any]


def _cell(run: Run, *, key: str, fmt: str) -> str:
    value = run.get(key, math.nan)
    if key == "completed" and run["completed"] != run["events"]:
        return f"{run['completed']}/{run['events']}"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def _ordered(runs: Sequence[Run]) -> list[Run]:
    def key(run: Run) -> tuple[int, int, int]:
        system = run["system"]
        rank = SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER)
        return int(run["latency_ms"]), int(run.get("round", 1)), rank

    return sorted(runs, key=key)


def text_table(runs: Sequence[Run]) -> str:
    rows = [[title for _, title, _ in COLUMNS]]
    rows += [[_cell(run, key=key, fmt=fmt) for key, _, fmt in COLUMNS] for run in _ordered(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(runs: Sequence[Run]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " | note |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for run in _ordered(runs):
        cells = [_cell(run, key=key, fmt=fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {run.get('note', '')} |")
    return "\n".join(lines)


def _rounds(runs: Sequence[Run], *, system: str, latency: int) -> dict[int, Run]:
    return {
        int(run.get("round", 1)): run
        for run in runs
        if run["system"] == system and int(run["latency_ms"]) == latency
    }


def _find(runs: Sequence[Run], *, system: str, latency: int) -> Run | None:
    """The system's run at that latency; of several rounds, the one of median throughput."""
    found = sorted(
        _rounds(runs, system=system, latency=latency).values(), key=lambda run: run["throughput"]
    )
    return found[(len(found) - 1) // 2] if found else None


def round_ratios(
    runs: Sequence[Run],
    *,
    other: str,
    latency: int,
    key: str = "throughput",
    system: str = "ccsync",
    other_latency: int | None = None,
) -> list[float]:
    """system/other of ``key``, round by round: each round ran both, one after the other.
    ``other_latency``: the other's runs at that latency (the same system at 0 ms, say)."""
    ours, theirs = (
        _rounds(runs, system=system, latency=latency),
        _rounds(runs, system=other, latency=latency if other_latency is None else other_latency),
    )
    if len(theirs) == 1:
        # Measured once (naive Celery): every round of ccsync is compared with it.
        (only,) = theirs.values()
        theirs = dict.fromkeys(ours, only)
    return [
        ratio(ours[n].get(key, math.nan), theirs[n].get(key, math.nan))
        for n in sorted(ours)
        if n in theirs
    ]


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def ratio_lines(runs: Sequence[Run]) -> list[str]:
    """``ccsync/bare`` and ``ccsync/naive`` (and ``ccsync/bare-gevent`` when it ran) at each
    latency: throughput first, the rest after."""
    lines = []
    for latency in sorted({int(run["latency_ms"]) for run in runs}):
        ours = _find(runs, system="ccsync", latency=latency)
        if ours is None:
            continue
        for other_name in OTHERS:
            other = _find(runs, system=other_name, latency=latency)
            if other is None:
                continue
            ratios = round_ratios(runs, other=other_name, latency=latency)
            # _find takes the lower of the two middle runs when the rounds are even.
            shown = "median runs " if len(ratios) % 2 else "lower-middle runs "
            rounds = (
                f"median of {len(ratios)} rounds: {', '.join(f'{r:.3f}' for r in ratios)}; {shown}"
                if len(ratios) > 1
                else ""
            )
            steady = median(
                round_ratios(runs, other=other_name, latency=latency, key="steady_throughput")
            )
            lines.append(
                f"ccsync/{other_name} at {latency} ms: throughput "
                f"{median(ratios) or math.nan:.2f}x "
                f"({rounds}{ours['throughput']:.1f} vs {other['throughput']:.1f} events/s), "
                "steady-state throughput "
                f"{steady or math.nan:.3f}x, "
                f"p50 latency {ratio(ours['p50_ms'], other['p50_ms']):.2f}x, "
                f"peak RSS {ratio(ours['peak_rss_mb'], other['peak_rss_mb']):.2f}x"
            )
        pair = _find(runs, system="ccsync-2x32", latency=latency)
        single = _find(runs, system="ccsync-32", latency=latency)
        if pair is not None and single is not None:
            ratios = round_ratios(runs, system="ccsync-2x32", other="ccsync-32", latency=latency)
            lines.append(
                f"ccsync-2x32/ccsync-32 at {latency} ms (two processes against one): throughput "
                f"{median(ratios) or math.nan:.2f}x (rounds "
                f"{', '.join(f'{r:.3f}' for r in ratios)})"
            )
        if latency > 0 and _find(runs, system="ccsync", latency=0) is not None:
            ratios = round_ratios(runs, other="ccsync", latency=latency, other_latency=0)
            lines.append(
                f"ccsync at {latency} ms / ccsync at 0 ms: throughput "
                f"{median(ratios) or math.nan:.2f}x (rounds "
                f"{', '.join(f'{r:.3f}' for r in ratios)})"
            )
    return lines


def median_of(runs: Sequence[Run], *, system: str, latency: int, key: str) -> float | None:
    """The median of ``key`` over the system's rounds at that latency."""
    rounds = _rounds(runs, system=system, latency=latency).values()
    return median([float(run[key]) for run in rounds if key in run])


def checks(runs: Sequence[Run]) -> list[tuple[str, str, bool | None]]:
    """The targets of issue 16: (what, measured, met?); None when not measured in this run.
    Ratios are medians of the per-round ratios."""

    result: list[tuple[str, str, bool | None]] = []

    def check(what: str, value: float | None, target: float, *, unit: str = "x") -> None:
        if value is None or math.isnan(value):
            result.append((what, "not measured", None))
        elif unit == "x":
            result.append((what, f"{value:.3f}x", value >= target))
        else:
            result.append((what, f"{value:.2f} {unit}", value <= target))

    check(
        "ccsync at 100 ms >= 0.8x its own 0 ms throughput",
        median(round_ratios(runs, other="ccsync", latency=100, other_latency=0)),
        0.8,
    )
    check(
        "ccsync >= 2.5x bare (32 in flight) at 100 ms",
        median(round_ratios(runs, other="bare", latency=100)),
        2.5,
    )
    check(
        "ccsync at 300 ms >= 0.6x its own 0 ms throughput",
        median(round_ratios(runs, other="ccsync", latency=300, other_latency=0)),
        0.6,
    )
    check("ccsync >= 1.2x bare at 0 ms", median(round_ratios(runs, other="bare", latency=0)), 1.2)
    check(
        "ccsync >= 2.5x the fair Celery baseline at 100 ms",
        median(round_ratios(runs, other="celery", latency=100)),
        2.5,
    )
    check(
        "two ccsync processes >= 1.8x one at 100 ms, 32 in flight each",
        median(round_ratios(runs, system="ccsync-2x32", other="ccsync-32", latency=100)),
        1.8,
    )
    check(
        "ccsync worker CPU per event at 0 ms <= 0.85 ms",
        median_of(runs, system="ccsync", latency=0, key="worker_cpu_ms_per_event"),
        0.85,
        unit="ms",
    )
    peaks = [run["peak_rss_mb"] for run in runs if run["system"] == "ccsync"]
    if peaks:
        result.append(("ccsync peak memory < 250 MB", f"{max(peaks):.1f} MB", max(peaks) < 250.0))
    return result


def write_plot(runs: Sequence[Run], path: Path) -> bool:
    """A bar chart of throughput and p50/p99 latency; False when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = sorted({int(run["latency_ms"]) for run in runs})
    systems = [name for name in SYSTEM_ORDER if any(run["system"] == name for run in runs)]
    colors = {
        "ccsync": "#1f77b4",
        "ccsync-32": "#aec7e8",
        "ccsync-2x32": "#9467bd",
        "celery": "#ff7f0e",
        "bare": "#7f7f7f",
        "bare-gevent": "#bcbd22",
        "naive": "#d62728",
    }
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(systems), 1)
    for offset, name in enumerate(systems):
        xs, ys, p50, p99 = [], [], [], []
        for position, latency in enumerate(latencies):
            run = _find(runs, system=name, latency=latency)
            if run is None:
                continue
            xs.append(position + (offset - (len(systems) - 1) / 2) * width)
            ys.append(float(run["throughput"]))
            p50.append(float(run["p50_ms"]))
            p99.append(float(run["p99_ms"]))
        color = colors.get(name, "#2ca02c")
        bars = left.bar(xs, ys, width, label=name, color=color)
        left.bar_label(bars, fmt="%.0f", fontsize=8)
        right.bar(xs, p99, width, color=color, alpha=0.35)
        right.bar(xs, p50, width, color=color, label=f"{name} p50 (light: p99)")
    for axis in (left, right):
        axis.set_xticks(range(len(latencies)), [f"sandbox latency {ms} ms" for ms in latencies])
        axis.legend(fontsize=8)
    left.set_ylabel("events per second (higher is better)")
    left.set_title("Throughput")
    right.set_ylabel("publish to PATCH, ms (log scale)")
    right.set_yscale("log")
    right.set_title("Latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def markdown(
    results: Mapping[str, Any],
    soak: Mapping[str, Any] | None,
    plot: str | None,
    profile: str | None,
) -> str:
    runs: list[Run] = list(results["runs"])
    machine: Mapping[str, str] = results["machine"]
    settings: Mapping[str, Any] = results["settings"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand. Method and caveats: "
        "[bench/README.md](bench/README.md).",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {machine['nproc']} CPUs (`nproc`), {machine['ram']} RAM, {machine['cpu']}, "
        f"Linux {machine['kernel']}",
        f"- RabbitMQ {machine['rabbitmq']}, Python {machine['python']}, Celery "
        f"{machine['celery']}, kombu {machine['kombu']}, httpx {machine['httpx']}",
        f"- ccsync measured: {machine.get('ccsync', 'unknown')}",
        f"- Command: `{settings['command']}`",
        "- Broker, Redis, sandbox, publisher and worker all share this machine; the sandbox runs "
        "in its own process, so its CPU is not counted as the worker's.",
        "",
        "## Systems",
        "",
    ]
    out += [f"- **{name}**: {text}" for name, text in settings["systems"].items()]
    out += [
        "",
        "## Results",
        "",
        markdown_table(runs),
        "",
        f"Events are published while the worker runs ({settings['publishing']}). events/s = "
        "events / (first publish to the last PATCH answered by the sandbox). Latency = "
        "publish to the PATCH's arrival at the sandbox (journal `receivedAt`), so it includes "
        "queueing behind earlier events. Peak RSS: the worker process and all its children, "
        "sampled every 100 ms from ready to stop. Worker CPU: user+system time of those "
        "processes during the run, per event; broker (beam.smp), Redis and sandbox likewise. "
        "Machine CPU: all cores, during the run.",
        "",
        "## Ratios",
        "",
    ]
    out += [f"- {line}" for line in ratio_lines(runs)]
    out += ["", "## Targets (issue 16)", "", "| target | measured | met |", "|---|---|---|"]
    for what, measured, met in checks(runs):
        out.append(f"| {what} | {measured} | {'-' if met is None else 'yes' if met else 'NO'} |")
    if plot is not None:
        out += ["", "## Plot", "", f"![throughput and latency]({plot})"]
    if soak is not None:
        out += [
            "",
            "## Soak",
            "",
            f"`{soak['command']}` on {soak['date']} (ccsync {soak.get('ccsync', 'unknown')}): "
            f"{soak['events']} events through one ccsync worker (concurrency "
            f"{soak['concurrency']}, sandbox latency {soak['latency_ms']} ms) in "
            f"{soak['elapsed_s']:.0f} s ({soak['throughput']:.0f} events/s).",
            "",
            "| RSS at ready | after warm-up (start) | end | peak | growth start to end |",
            "|---|---|---|---|---|",
            f"| {soak['ready_rss_mb']:.1f} MB | {soak['start_rss_mb']:.1f} MB | "
            f"{soak['end_rss_mb']:.1f} MB | {soak['peak_rss_mb']:.1f} MB | "
            f"{soak['growth_pct']:+.1f}% |",
        ]
        if soak.get("note"):
            out += ["", str(soak["note"])]
        trail = soak.get("rss_mb_by_events")
        if trail:
            steps = ", ".join(f"{done:,}: {rss:.1f}" for done, rss in trail)
            out += ["", f"RSS (MB) as events completed: {steps}."]
    if profile is not None:
        out += ["", "## Where ccsync spends its time at 0 ms (py-spy)", "", "```", profile, "```"]
    return "\n".join(out) + "\n"
