"""What a first implementation looks like: one Celery task per event, prefork, defaults.

The producer sends each event as a Celery task (``send_task``); the task opens a new httpx client,
PATCHes and returns. Default pool (prefork) and concurrency (the number of CPUs), default prefetch,
no retries. Started by the benchmark as ``python -m celery -A bench.naive_celery worker``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx
from celery import Celery
from celery.signals import worker_ready

from bench.children import patch_arguments

READY = "naive worker ready"
TASK_NAME = "bench.naive.apply_event"

app = Celery("naive", broker=os.environ.get("BENCH_BROKER_URL", "amqp://127.0.0.1:5672//"))


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def apply_event(event: dict[str, Any]) -> None:
    base_url = os.environ["BENCH_BASE_URL"].rstrip("/")
    path, body, headers = patch_arguments(
        event, token=os.environ["BENCH_TOKEN"], default_tenant=os.environ["BENCH_TENANT"]
    )
    with httpx.Client(timeout=15.0) as client:
        response = client.patch(base_url + path, json=body, headers=headers)
    response.raise_for_status()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(**_: Any) -> None:
    # Instrumentation only: the benchmark waits for this line before publishing.
    print(READY, file=sys.stderr, flush=True)
