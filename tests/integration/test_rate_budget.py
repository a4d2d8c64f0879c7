"""Issue 26, item 2: an API that refuses each tenant's calls beyond 100 a second (429,
``Retry-After: 1``), on the real broker, with a real worker at its default concurrency.

With ``CCSYNC_API_RATE_LIMIT=100`` the worker spaces its calls by the fleet's budget in Redis and
is hardly ever refused; without it, each 429 slows the tenant's calls fleet-wide and costs no
attempt, so nothing is dead-lettered however often the API refuses.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.events import native
from tests.integration.producer import publish_burst, queue_depth
from tests.integration.waiting import wait_until
from tests.integration.worker_logs import outcome_counts
from worker.constants import DEAD_LETTER_QUEUE
from worker.sandbox import RateLimit, SandboxControl
from worker.settings import DEFAULT_CONCURRENCY
from worker.testing import LocalWorker

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

EVENTS = 3_000
API_CALLS_PER_SECOND = 100
API_LATENCY_MS = 20
#: The issue's bound: 3,000 calls at 100 a second take 30 s; 39 s leaves 30 % for the rest.
DRAIN_SECONDS = 39.0


def drain(
    env: dict[str, str], broker_url: str, sandbox: SandboxControl, *, timeout: float
) -> tuple[float, int, int]:
    """3,000 events of a tenant of their own, published to a running worker while the sandbox
    allows 100 calls a second per tenant: seconds from publishing to the last call answered 204,
    the PATCH calls made and how many were refused (429). Asserts every value landed."""
    tenant = f"rate-{uuid.uuid4().hex[:12]}.example.com"
    events = [native(identifier=f"RATE-{n}", tenant=tenant) for n in range(EVENTS)]
    sandbox.configure(latency_ms=API_LATENCY_MS)
    sandbox.set_rate_limit(RateLimit(calls_per_second=API_CALLS_PER_SECOND, retry_after=1))
    with LocalWorker(env, concurrency=DEFAULT_CONCURRENCY) as worker:
        published = time.time()
        publish_burst(broker_url, events)
        wait_until(
            lambda: sum(outcome_counts(worker).values()) >= EVENTS,
            timeout=timeout,
            what=f"{EVENTS} events applied or dead-lettered",
            interval=0.5,
        )
        assert worker.alive
        outcomes = outcome_counts(worker)
    patches = [
        entry
        for entry in sandbox.journal()
        if entry["method"] == "PATCH" and entry["headers"].get("x-tenant") == tenant
    ]
    applied = [entry for entry in patches if entry["status"] == 204]
    refused = sum(1 for entry in patches if entry["status"] == 429)
    seconds = max(entry["receivedAt"] for entry in applied) - published
    print(
        f"{EVENTS} events in {seconds:.1f}s: {len(patches)} calls, {refused} refused "
        f"({100 * refused / len(patches):.1f} %), outcomes {dict(outcomes)}"
    )
    assert outcomes["dead-lettered"] == 0
    assert queue_depth(broker_url, DEAD_LETTER_QUEUE) == 0
    wanted = {event["customerId"]: event["internalIdentifier"] for event in events}
    stored = {c["id"]: c["relationships"].get("self") for c in sandbox.state() if c["id"] in wanted}
    assert stored == wanted
    return seconds, len(patches), refused


def test_given_a_rate_limit_of_100_then_3000_events_drain_in_39_s_with_1_percent_refused(
    own_worker_env: WorkerEnv, broker_url: str, sandbox: SandboxControl
) -> None:
    env = own_worker_env(CCSYNC_API_RATE_LIMIT=str(API_CALLS_PER_SECOND))
    seconds, calls, refused = drain(env, broker_url, sandbox, timeout=120)
    assert refused <= 0.01 * calls
    assert seconds <= DRAIN_SECONDS


def test_given_no_rate_limit_then_429s_slow_the_tenant_and_nothing_is_dead_lettered(
    own_worker_env: WorkerEnv, broker_url: str, sandbox: SandboxControl
) -> None:
    _, calls, refused = drain(own_worker_env(), broker_url, sandbox, timeout=300)
    assert refused <= 0.10 * calls
