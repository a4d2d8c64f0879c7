"""A fair Celery baseline: what a Celery user writes first with the docs open, for I/O-bound work.

One Celery task per event (``send_task``), the ``threads`` pool with 32 threads (``-P threads
-c 32``), late acknowledgement (``acks_late``), and one httpx client shared by the threads, with
a connection for each of them. Default prefetch; no retries, ledger or dead letters. Started by
the benchmark as ``python -m celery -A bench.fair_celery worker -P threads -c 32``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx
from celery import Celery
from celery.signals import worker_ready

from bench.children import patch_arguments

READY = "fair Celery worker ready"
TASK_NAME = "bench.fair.apply_event"
#: Threads of the pool, and connections of the shared client.
THREADS = 32

app = Celery("fair", broker=os.environ.get("BENCH_BROKER_URL", "amqp://127.0.0.1:5672//"))
app.conf.task_acks_late = True
app.conf.task_ignore_result = True

http = httpx.Client(
    base_url=os.environ.get("BENCH_BASE_URL", "http://127.0.0.1"),
    timeout=15.0,
    limits=httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS),
)


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def apply_event(event: dict[str, Any]) -> None:
    path, body, headers = patch_arguments(
        event, token=os.environ["BENCH_TOKEN"], default_tenant=os.environ["BENCH_TENANT"]
    )
    response = http.patch(path, json=body, headers=headers)
    response.raise_for_status()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(**_: Any) -> None:
    # Instrumentation only: the benchmark waits for this line before publishing.
    print(READY, file=sys.stderr, flush=True)
