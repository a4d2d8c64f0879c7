"""The bare baseline: the least code that moves an event from RabbitMQ to a PATCH.

A kombu consumer on a classic durable queue bound to ``customer-events``; a pool of threads
sharing one httpx client; the same headers and body as ccsync; ack after the call. No validation,
ledger, retries, dead letters or Celery. py-amqp is not thread-safe, so the pool hands finished
messages back to the main thread, which acks them between short waits for deliveries.

Run by the benchmark as ``python -m bench.bare``; it prints ``READY`` once consuming.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from kombu import Connection, Consumer, Exchange, Queue

from bench.children import patch_arguments, stop_on_signals
from worker.constants import EVENT_ROUTING_KEY, EVENTS_EXCHANGE

READY = "bare worker ready"
QUEUE = "bench.bare"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)

    stop = stop_on_signals()
    concurrency: int = args.concurrency
    base_url = str(args.base_url).rstrip("/")
    token: str = args.token
    default_tenant: str = args.tenant
    http = httpx.Client(
        timeout=httpx.Timeout(15.0, connect=5.0),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )
    finished: deque[Any] = deque()
    failures = 0

    def call(message: Any, event: dict[str, Any]) -> None:
        nonlocal failures
        try:
            path, body, headers = patch_arguments(event, token=token, default_tenant=default_tenant)
            response = http.patch(base_url + path, json=body, headers=headers)
            if response.status_code >= 300:
                failures += 1
        except Exception as exc:
            failures += 1
            if failures <= 10:
                print(f"bare: call failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            finished.append(message)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bare")

    def on_message(message: Any) -> None:
        pool.submit(call, message, json.loads(message.body))

    exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
    queue = Queue(QUEUE, exchange=exchange, routing_key=EVENT_ROUTING_KEY, durable=True)
    deadline = time.monotonic() + float(args.max_seconds)
    with Connection(args.broker) as connection:
        consumer = Consumer(
            connection.channel(),
            queues=[queue],
            on_message=on_message,
            prefetch_count=2 * concurrency,
            no_ack=False,
        )
        consumer.consume()
        print(READY, flush=True)
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.005)
            while finished:
                finished.popleft().ack()
        consumer.cancel()
        pool.shutdown(wait=True)
        while finished:
            finished.popleft().ack()
    http.close()
    print(f"bare: stopped; {failures} failed call(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
