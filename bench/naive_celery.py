"""What a first implementation looks like: one Celery task per event, prefork, defaults.

The producer sends each event as a Celery task (``send_task``); the task opens a new httpx client,
PATCHes and returns. Default pool (prefork) and concurrency (the number of CPUs), default prefetch,
no retries. Started by the benchmark as ``python -m celery -A bench.naive_celery worker``.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import httpx
from celery import Celery
from celery.signals import worker_ready

READY = "naive worker ready"
TASK_NAME = "bench.naive.apply_event"
CORRELATION_NAMESPACE = uuid.UUID("5b0f4f7e-2a4c-5d69-9d0e-6363737973e1")

app = Celery("naive", broker=os.environ.get("BENCH_BROKER_URL", "amqp://127.0.0.1:5672//"))


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def apply_event(event: dict[str, Any]) -> None:
    base_url = os.environ["BENCH_BASE_URL"].rstrip("/")
    tenant = event.get("tenant") or os.environ["BENCH_TENANT"]
    name = json.dumps([tenant, event["eventId"]], ensure_ascii=False, separators=(",", ":"))
    with httpx.Client(timeout=15.0) as client:
        response = client.patch(
            f"{base_url}/v1/Customers/{event['customerId']}/internal-identifier",
            json={
                "internalIdentifier": event.get("internalIdentifier"),
                "resellerId": event.get("resellerId"),
            },
            headers={
                "Authorization": f"Bearer {os.environ['BENCH_TOKEN']}",
                "X-Tenant": tenant,
                "X-Correlation-Id": str(uuid.uuid5(CORRELATION_NAMESPACE, name)),
            },
        )
    response.raise_for_status()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(**_: Any) -> None:
    # Instrumentation only: the benchmark waits for this line before publishing.
    print(READY, file=sys.stderr, flush=True)
