"""``python -m bench``: ccsync beside bare and naive Celery; ``soak`` and ``backoff``: memory;
``profile``: where ccsync's time goes (py-spy), without measuring the rest again; ``ingest``:
events per second ``ccsync ingest`` accepts over HTTP.

Needs RabbitMQ (rabbitmqctl on PATH, guest user) and Redis on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.backoff import run_backoff
from bench.harness import (
    Bare,
    BareGevent,
    Ccsync,
    CcsyncPair,
    FairCelery,
    NaiveCelery,
    RunResult,
    System,
    collect,
    make_events,
    publish_plain,
    run_once,
)
from bench.infra import (
    REPO_ROOT,
    SandboxProcess,
    TreeSampler,
    Vhost,
    ccsync_revision,
    delete_stale_vhosts,
    machine_info,
)
from bench.ingest import INGEST_RESULTS, ingest_markdown, run_ingest_bench
from bench.profile import py_spy, start_profile, summarise
from bench.report import markdown, ratio_lines, text_table, write_plot
from worker.sandbox import SandboxControl
from worker.settings import DEFAULT_CONCURRENCY

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
SOAK_RESULTS = BENCH_DIR / "soak.json"
PROFILE_SUMMARY = BENCH_DIR / "profile-summary.txt"
PLOT = BENCH_DIR / "throughput.png"
MARKDOWN = REPO_ROOT / "BENCHMARKS.md"
PUBLISHING = (
    "all N published back to back as fast as the publisher goes, each persistent; plain "
    "JSON to `customer-events` with confirms batched (window 1,000) for ccsync and bare, "
    "`send_task` for the Celery baselines"
)
#: Calls in flight of the baselines (bare's threads) and of ``ccsync-32`` and each worker of
#: ``ccsync-2x32``: the concurrency every system had before calls in flight grew.
BASELINE_CONCURRENCY = 32
#: Systems too slow to repeat: they run in the first round only.
ONCE = ("naive",)
#: Headings of BENCHMARKS.md sections other runs write (the cluster run, the dead-letter store
#: tests): kept, at the end.
KEPT_SECTIONS = ("## Scale-out (issue 18)", "## Dead-letter store (issue 28)")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(143)  # unwinds through every finally: workers stopped, vhosts deleted


def _latencies(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def write_markdown() -> None:
    if not RESULTS.exists():
        return
    results = json.loads(RESULTS.read_text())
    soak = json.loads(SOAK_RESULTS.read_text()) if SOAK_RESULTS.exists() else None
    profile = PROFILE_SUMMARY.read_text().strip() if PROFILE_SUMMARY.exists() else None
    plot = PLOT.relative_to(REPO_ROOT).as_posix() if PLOT.exists() else None
    text = markdown(results, soak, plot, profile)
    if INGEST_RESULTS.exists():  # the ingest figures survive a run of the other benchmarks
        text = text.rstrip("\n") + "\n\n" + ingest_markdown(json.loads(INGEST_RESULTS.read_text()))
    kept = _kept_sections(MARKDOWN.read_text() if MARKDOWN.exists() else "")
    if kept:
        text = text.rstrip("\n") + "\n\n" + kept
    MARKDOWN.write_text(text)


def _kept_sections(text: str) -> str:
    """The sections of BENCHMARKS.md written by other runs than this module's (``KEPT_SECTIONS``),
    from the first of them to the end, as they are."""
    starts = [text.find(f"\n{heading}\n") for heading in KEPT_SECTIONS]
    found = [start for start in starts if start >= 0]
    return text[min(found) + 1 :].rstrip("\n") + "\n" if found else ""


def _profiler(pid: int, raw: Path, mode: str) -> Callable[[], None]:
    return start_profile(pid, raw, mode=mode)


def profile_ccsync(sandbox_url: str, *, concurrency: int, events: int) -> str:
    """Two more ccsync runs at 0 ms, not in the table, under py-spy: CPU (GIL) and wall time."""
    summaries = []
    with tempfile.TemporaryDirectory(prefix="ccsync-bench-") as directory:
        for mode, title in (
            ("gil", "samples of the thread holding the GIL (where the CPU goes)"),
            ("idle", "samples of every thread (where the time goes, waits included)"),
        ):
            print(f"ccsync at 0 ms under py-spy ({mode}): {events} events ...", flush=True)
            raw = Path(directory) / f"{mode}.txt"
            run_once(
                Ccsync(concurrency),
                str(concurrency),
                sandbox_url,
                0,
                events,
                during=functools.partial(_profiler, raw=raw, mode=mode),
            )
            if raw.exists():
                summaries.append(summarise(raw, f"{events} events, {title}"))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"profiled {when}, ccsync {ccsync_revision()}\n\n" + "\n\n".join(summaries)


def schedule(
    latencies: Sequence[int],
    rounds: int,
    names: Sequence[str],
    *,
    only_at: Mapping[str, Sequence[int]] | None = None,
) -> list[tuple[int, int, str]]:
    """(latency, round, system) in the order they run: at each latency, round after round of
    every system in turn, so that each round's runs share the machine's conditions. Naive Celery
    is too slow to repeat: it runs in the first round only. ``only_at`` limits a system to some
    latencies (the scale-out pair)."""
    limits = only_at or {}
    return [
        (latency, number, name)
        for latency in latencies
        for number in range(1, rounds + 1)
        for name in names
        if (number == 1 or name not in ONCE) and latency in limits.get(name, [latency])
    ]


def run_benchmark(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="ccsync beside bare and naive Celery."
    )
    parser.add_argument("--events", type=int, default=5000, help="events per run")
    parser.add_argument("--latencies", default="0,100,300", help="sandbox latencies, ms")
    parser.add_argument("--quick", action="store_true", help="500 events (naive: 200 at >0 ms)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="calls in flight of the system named ccsync (default: the CLI's)",
    )
    parser.add_argument(
        "--baseline-concurrency",
        type=int,
        default=BASELINE_CONCURRENCY,
        help="calls in flight of bare, ccsync-32 and each worker of ccsync-2x32",
    )
    parser.add_argument("--systems", default="ccsync,ccsync-32,bare,celery,naive,ccsync-2x32")
    parser.add_argument(
        "--scale-out-latencies",
        default="100",
        help="latencies (ms) at which ccsync-2x32 runs",
    )
    parser.add_argument(
        "--naive-cap",
        type=int,
        default=1000,
        help="events for naive Celery at 100 ms (it does ~20/s); fewer in proportion above",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then two more ccsync runs at 0 ms under py-spy (CPU, then wall time)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of ccsync and bare at each latency, one after the other (naive: once)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rounds: int = max(1, args.rounds)
    events: int = 500 if args.quick else args.events
    naive_cap: int = min(args.naive_cap, 200) if args.quick else args.naive_cap
    concurrency: int = args.concurrency
    baseline: int = args.baseline_concurrency
    latencies = _latencies(args.latencies)
    factories: dict[str, Callable[[], System]] = {
        "ccsync": lambda: Ccsync(concurrency),
        f"ccsync-{baseline}": lambda: Ccsync(baseline, name=f"ccsync-{baseline}"),
        f"ccsync-2x{baseline}": lambda: CcsyncPair(baseline, name=f"ccsync-2x{baseline}"),
        "bare": lambda: Bare(baseline),
        "celery": FairCelery,
        "naive": NaiveCelery,
        "bare-gevent": lambda: BareGevent(baseline),
    }
    names = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(names) - set(factories)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")

    signal.signal(signal.SIGTERM, _on_sigterm)
    delete_stale_vhosts()
    machine = machine_info()
    runs: list[RunResult] = []
    systems = {name: factories[name]() for name in names}
    began = time.monotonic()
    sandbox = SandboxProcess()
    try:
        sandbox.start()
        only_at = {f"ccsync-2x{baseline}": _latencies(args.scale_out_latencies)}
        for latency, round_number, name in schedule(
            latencies, rounds, list(systems), only_at=only_at
        ):
            system = systems[name]
            count, note = events, ""
            cap = naive_cap * 100 // max(latency, 100)
            if name == "naive" and latency > 0 and cap < events:
                count, note = cap, f"{cap} events only (slow)"
            label = str(getattr(system, "concurrency", machine["nproc"]))
            if isinstance(system, CcsyncPair):
                label = str(2 * system.concurrency)
            print(f"{name} at {latency} ms, round {round_number}: {count} events ...", flush=True)
            result = run_once(
                system, label, sandbox.url, latency, count, sandbox_pid=sandbox.pid, note=note
            )
            result.round = round_number
            print(
                f"  {result.throughput:.1f} events/s, p50 {result.p50_ms:.0f} ms, "
                f"p99 {result.p99_ms:.0f} ms, peak RSS {result.peak_rss_mb:.1f} MB"
                + (f" ({result.note})" if result.note else ""),
                flush=True,
            )
            runs.append(result)
        profile_text = None
        if args.profile:
            profile_text = profile_ccsync(
                sandbox.url, concurrency=concurrency, events=min(events, 3000)
            )
    finally:
        sandbox.stop()
    print(f"\n(ran in {time.monotonic() - began:.0f} s)\n")
    if profile_text is not None:
        print(profile_text + "\n")
    if not args.no_write:
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine,
            "settings": {
                "command": " ".join(["python -m bench", *argv]),
                "publishing": PUBLISHING,
                "systems": {name: system.description for name, system in systems.items()},
            },
            "runs": [asdict(run) for run in runs],
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        if profile_text is not None:
            PROFILE_SUMMARY.write_text(profile_text + "\n")
        plotted = write_plot(results["runs"], PLOT)
        write_markdown()
        print(f"wrote {MARKDOWN.name}, {RESULTS.relative_to(REPO_ROOT)}", end="")
        print(f", {PLOT.relative_to(REPO_ROOT)}" if plotted else " (no plot: no matplotlib)")
    print(text_table([asdict(run) for run in runs]))
    print()
    for line in ratio_lines([asdict(run) for run in runs]):
        print(line)
    return 0


def run_soak(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description="One ccsync worker through many events: RSS."
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=2_000, help="events before 'start' RSS")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    delete_stale_vhosts()
    system = Ccsync(args.concurrency)
    sandbox = SandboxProcess()
    mb = 2**20
    try:
        sandbox.start()
        with SandboxControl(sandbox.url, timeout=60) as control, Vhost("soak") as vhost:
            control.clear_journal()
            control.configure(latency_ms=args.latency_ms)
            sampler: TreeSampler | None = None
            try:
                sampler = TreeSampler(system.start(vhost.url, sandbox.url)).start()
                time.sleep(1.0)
                ready = sampler.last
                trail: list[tuple[int, float]] = []

                def phase(count: int, tag: str, *, report: bool) -> float:
                    assert sampler is not None
                    marks = {count * step // 10 for step in range(1, 11)}

                    def progress(done: int) -> None:
                        while report and marks and done >= min(marks):
                            marks.remove(min(marks))
                            trail.append((done, round(sampler.last / mb, 1)))
                            print(
                                f"  {done:>7} events  RSS {sampler.last / mb:6.1f} MB", flush=True
                            )

                    started = time.time()
                    publish_plain(vhost.url, make_events(count, tag), tag=tag)
                    observed = collect(
                        control,
                        tag,
                        expected=count,
                        timeout=120 + count / 5,
                        on_progress=progress,
                    )
                    if observed.stalled:
                        raise RuntimeError(f"{len(observed.received_at)}/{count} events arrived")
                    return max(observed.responded_at.values()) - started

                print(f"warm-up: {args.warmup} events ...", flush=True)
                phase(args.warmup, "warmup", report=False)
                time.sleep(2.0)
                start = sampler.last
                peak_before = sampler.peak
                print(f"soak: {args.events} events; RSS at start {start / mb:.1f} MB", flush=True)
                elapsed = phase(args.events, "soak", report=True)
                time.sleep(2.0)
                end = sampler.last
                peak = sampler.peak
            finally:
                system.stop()
                if sampler is not None:
                    sampler.stop()
    finally:
        sandbox.stop()
    growth = 100 * (end - start) / start
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench soak", *argv]),
        "ccsync": ccsync_revision(),
        "events": args.events,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "elapsed_s": round(elapsed, 1),
        "throughput": round(args.events / elapsed, 1),
        "ready_rss_mb": round(ready / mb, 1),
        "start_rss_mb": round(start / mb, 1),
        "end_rss_mb": round(end / mb, 1),
        "peak_rss_mb": round(peak / mb, 1),
        "growth_pct": round(growth, 1),
        "rss_mb_by_events": trail,
        "note": (
            f"Start is the RSS after {args.warmup} warm-up events (pools, connections and lazy "
            f"imports in place); the peak during warm-up was {peak_before / mb:.1f} MB."
        ),
    }
    if not args.no_write:
        SOAK_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown()
    print(
        f"soak: {args.events} events in {elapsed:.0f} s ({args.events / elapsed:.0f}/s); "
        f"RSS ready {ready / mb:.1f} MB, start {start / mb:.1f} MB, end {end / mb:.1f} MB, "
        f"peak {peak / mb:.1f} MB; growth start to end {growth:+.1f}%"
    )
    return 0


def run_profile(argv: Sequence[str]) -> int:
    """Only the py-spy runs of ``--profile``: refreshes the profile in BENCHMARKS.md."""
    parser = argparse.ArgumentParser(
        prog="python -m bench profile", description="Where ccsync spends its time at 0 ms."
    )
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = parser.parse_args(argv)
    if py_spy() is None:
        parser.error("needs py-spy (pip install py-spy)")
    signal.signal(signal.SIGTERM, _on_sigterm)
    delete_stale_vhosts()
    sandbox = SandboxProcess()
    try:
        sandbox.start()
        profile_text = profile_ccsync(sandbox.url, concurrency=args.concurrency, events=args.events)
    finally:
        sandbox.stop()
    PROFILE_SUMMARY.write_text(profile_text + "\n")
    write_markdown()
    print(profile_text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "profile":
        return run_profile(arguments[1:])
    if arguments and arguments[0] == "soak":
        return run_soak(arguments[1:])
    if arguments and arguments[0] == "backoff":
        return run_backoff(arguments[1:])
    if arguments and arguments[0] == "ingest":
        return run_ingest_bench(arguments[1:])
    return run_benchmark(arguments)


if __name__ == "__main__":
    sys.exit(main())
