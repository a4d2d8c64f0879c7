"""``python -m bench ingest``: events per second ``ccsync ingest`` accepts (202: confirmed by the
broker), one event per request and in CloudEvents batches.

No worker runs: what is measured is ingest and the broker, up to the publisher confirm. The
client (httpx, asyncio, ``--clients`` requests in flight) shares the machine with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from kombu import Connection

from bench.harness import make_events, percentile
from bench.infra import (
    REPO_ROOT,
    Vhost,
    ccsync_revision,
    child_process,
    cpu_seconds,
    delete_stale_vhosts,
    machine_info,
)
from worker.amqp.topology import declare_topology
from worker.testing import ChildProcess

INGEST_RESULTS: Final = Path(__file__).resolve().parent / "ingest.json"
MARKDOWN: Final = REPO_ROOT / "BENCHMARKS.md"
SECTION_TITLE: Final = "## Ingest over HTTP (`python -m bench ingest`)"
TOKEN: Final = secrets.token_urlsafe(32)
#: Port of the ingest server during the benchmark (not the default 8091, which may be in use).
PORT: Final = 18091


def _structured(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": event["eventType"],
        "id": event["eventId"],
        "source": "ccsync-bench",
        "time": event["occurredAt"],
        "data": {"customerId": event["customerId"], "internalIdentifier": "BENCH"},
    }


async def _post_all(
    url: str, bodies: list[tuple[bytes, str]], *, clients: int
) -> tuple[float, list[float]]:
    """Post every body, ``clients`` at a time; (seconds in all, seconds of each request)."""
    pending = iter(bodies)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def loop() -> None:
            for body, content_type in pending:
                started = time.perf_counter()
                answer = await client.post(
                    url,
                    content=body,
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
                )
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 202:
                    raise RuntimeError(f"ingest answered {answer.status_code}: {answer.text}")

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return time.perf_counter() - began, latencies


def _measure(
    ingest: ChildProcess, url: str, bodies: list[tuple[bytes, str]], *, events: int, clients: int
) -> dict[str, Any]:
    cpu_before = cpu_seconds([ingest.pid])
    elapsed, latencies = asyncio.run(_post_all(url, bodies, clients=clients))
    cpu = cpu_seconds([ingest.pid]) - cpu_before
    return {
        "events": events,
        "requests": len(bodies),
        "clients": clients,
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed, 1),
        "requests_per_s": round(len(bodies) / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "ingest_cpu_ms_per_event": round(1000 * cpu / events, 3),
    }


def run_ingest_bench(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="events sent one per request")
    parser.add_argument("--batched-events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="events per batched request")
    parser.add_argument("--clients", type=int, default=4, help="requests in flight")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    delete_stale_vhosts()
    url = f"http://127.0.0.1:{PORT}/v1/events"
    with Vhost("ingest") as vhost:
        with Connection(vhost.url) as connection:
            declare_topology(connection)  # a bound queue: mandatory publishing needs one
        ingest = child_process(
            [sys.executable, "-m", "worker", "ingest", "--port", str(PORT)],
            env={"CCSYNC_BROKER_URL": vhost.url, "CCSYNC_INGEST_TOKEN": TOKEN},
            ready_marker="Uvicorn running on",
            name="ccsync ingest",
        ).start()
        try:
            warmup = [(json.dumps(e).encode(), "application/json") for e in make_events(200, "w")]
            _measure(ingest, url, warmup, events=len(warmup), clients=args.clients)
            tag = uuid.uuid4().hex[:6]
            single = [
                (json.dumps(event).encode(), "application/json")
                for event in make_events(args.events, f"single-{tag}")
            ]
            print(f"single: {args.events} requests of one event ...", flush=True)
            one = _measure(ingest, url, single, events=args.events, clients=args.clients)
            events = make_events(args.batched_events, f"batch-{tag}")
            batches = [
                (
                    json.dumps([_structured(e) for e in events[i : i + args.batch]]).encode(),
                    "application/cloudevents-batch+json",
                )
                for i in range(0, len(events), args.batch)
            ]
            print(f"batched: {len(batches)} requests of {args.batch} events ...", flush=True)
            many = _measure(ingest, url, batches, events=len(events), clients=args.clients)
        finally:
            ingest.stop()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench ingest", *argv]),
        "ccsync": ccsync_revision(),
        "machine": machine_info(),
        "batch": args.batch,
        "single": one,
        "batched": many,
    }
    for name in ("single", "batched"):
        run = result[name]
        print(
            f"{name}: {run['events_per_s']:.0f} events/s ({run['requests_per_s']:.0f} requests/s, "
            f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
            f"ingest CPU {run['ingest_cpu_ms_per_event']} ms/event)"
        )
    if not args.no_write:
        INGEST_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        replace_section(MARKDOWN, ingest_markdown(result))
        print(f"wrote {MARKDOWN.name}, {INGEST_RESULTS.relative_to(REPO_ROOT)}")
    return 0


def ingest_markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of an ingest run (``result`` as written to ingest.json)."""
    machine = result["machine"]
    rows = []
    for name, label in (("single", "one event per request"), ("batched", "batches")):
        run = result[name]
        if name == "batched":
            label = f"batches of {result['batch']} (CloudEvents)"
        rows.append(
            f"| {label} | {run['events']} | {run['requests']} | {run['clients']} | "
            f"{run['events_per_s']:.0f} | {run['requests_per_s']:.0f} | {run['p50_ms']} | "
            f"{run['p99_ms']} | {run['ingest_cpu_ms_per_event']} |"
        )
    return "\n".join(
        [
            SECTION_TITLE,
            "",
            f"- Date: {result['date']}; ccsync {result['ccsync']}; "
            f"{machine.get('nproc', '?')} CPUs shared by client, ingest and broker",
            "- Events accepted = answered 202, i.e. every event confirmed by RabbitMQ "
            "(persistent, mandatory, one confirm channel); bearer token; no worker consuming.",
            "- Each event waits for its own confirm before the next is published, so a batch "
            "costs one broker round trip per event; the client (httpx) runs on the same cores.",
            "",
            "| requests | events | requests sent | in flight | events/s | requests/s | "
            "p50 ms | p99 ms | ingest CPU ms/event |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` in place of the one with its title in ``path``, or at its end."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
