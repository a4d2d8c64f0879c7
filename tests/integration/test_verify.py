"""``ccsync verify`` (issue 20, part 1): CloudCockpit read back and compared with the ledger.

The real worker applies events, the sandbox is changed behind its back, and ``ccsync verify``
finds exactly that, repairs it through the lock and the ledger, and then finds nothing. The rest
drives ``worker.ops.verify`` directly over a ledger of its own, in the real Redis (db 15).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner, Result

from tests.integration.conftest import WorkerEnv, worker_env
from tests.integration.events import native
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from tests.support import REDIS_URL
from worker.cli import main
from worker.cloudcockpit.client import CloudCockpitClient
from worker.cloudcockpit.tokens import StaticToken
from worker.ops.verify import Check, Filters, Pace, RepairOutcome, Status, Verifier
from worker.processing.budget import RateBudget
from worker.processing.ledger import Ledger, Relationship
from worker.processing.ledger.records import format_record
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = pytest.mark.timeout(120)

JSON_KEYS = {"tenant", "customerId", "resellerId", "expected", "actual", "status"}
RESELLER = "9c1d2e3f-4a5b-4c6d-8e7f-901234567890"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def unique_tenant() -> str:
    return f"verify-{uuid.uuid4().hex[:10]}.example"


def ccsync_verify(env: dict[str, str], *args: str) -> Result:
    """``ccsync verify ARGS`` in this process, as an operator would type it."""
    return CliRunner().invoke(main, ["verify", *args], env=env, catch_exceptions=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def identifier(sandbox: SandboxControl, customer: str, reseller: str = "self") -> Any:
    [found] = [c for c in sandbox.state() if c["id"] == customer]
    return found["relationships"][reseller]


# --- through a real worker -------------------------------------------------------------------


def test_given_a_value_changed_behind_ccsyncs_back_then_verify_finds_it_and_repair_puts_it_back(
    own_worker_env: WorkerEnv,
    sandbox: SandboxControl,
    producer: Producer,
    worker: LocalWorker,
) -> None:
    # Given three customers of a tenant of this test, each with two events applied by the worker
    tenant = unique_tenant()
    customers = [str(uuid.uuid4()) for _ in range(3)]
    for n, customer in enumerate(customers):
        for version in range(2):
            event = native(
                customer,
                f"C{n}-V{version}",
                occurred_at=T0 + timedelta(seconds=version),
                tenant=tenant,
            )
            producer.publish(json.dumps(event).encode(), "application/json")
    wait_until(
        lambda: all(
            any(
                c["id"] == customer and c["relationships"].get("self") == f"C{n}-V1"
                for c in sandbox.state()
            )
            for n, customer in enumerate(customers)
        ),
        timeout=60,
        what="the newest value of each customer in the sandbox",
    )
    env = own_worker_env()
    first = ccsync_verify(env, "--tenant", tenant)
    assert first.exit_code == 0, first.output
    assert "checked 3: 3 in-sync, 0 drift" in first.output

    # When someone changes one of them in CloudCockpit, behind ccsync's back
    drifted = customers[1]
    sandbox.set_identifier(drifted, "EDITED-IN-THE-PORTAL", tenant=tenant)

    # Then verify reports exactly that customer, with both values, and exits 1
    found = ccsync_verify(env, "--tenant", tenant)
    assert found.exit_code == 1, found.output
    rows = [line for line in found.stdout.splitlines() if line.startswith(tuple(Status))]
    assert len(rows) == 1
    assert rows[0].startswith("drift") and drifted in rows[0]
    assert '"C1-V1"' in rows[0] and '"EDITED-IN-THE-PORTAL"' in rows[0]
    assert "checked 3: 2 in-sync, 1 drift" in found.output

    # When it repairs, without asking
    repaired = ccsync_verify(env, "--tenant", tenant, "--repair", "--yes")
    assert repaired.exit_code == 0, repaired.output
    assert f"repaired: {drifted} self {tenant}" in repaired.output
    assert "repairs: 1 repaired" in repaired.output

    # Then CloudCockpit holds the newest value again, written with a correlation id of its own
    assert identifier(sandbox, drifted) == "C1-V1"
    patches = [e for e in sandbox.journal(customer_id=drifted) if e["method"] == "PATCH"]
    assert len({e["headers"]["x-correlation-id"] for e in patches}) == len(patches)
    # And a second verify finds nothing
    again = ccsync_verify(env, "--tenant", tenant)
    assert again.exit_code == 0, again.output
    assert "checked 3: 3 in-sync, 0 drift" in again.output
    # And the worker still judges the ledger as before: an older event is stale
    stale = native(drifted, "OLDER", occurred_at=T0 - timedelta(days=1), tenant=tenant)
    producer.publish(json.dumps(stale).encode(), "application/json")
    wait_until(lambda: f"event {stale['eventId']} is stale" in worker.log, timeout=30, what="stale")
    assert identifier(sandbox, drifted) == "C1-V1"


def test_given_json_then_one_object_per_relationship_with_the_contract_keys(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxControl
) -> None:
    # Given, in the worker's ledger, one relationship in sync and one drifted, of a new tenant
    tenant = unique_tenant()
    ledger = Ledger.from_url(REDIS_URL)
    in_sync, drifted = str(uuid.uuid4()), str(uuid.uuid4())
    record(ledger, Relationship(tenant, in_sync, None), "A")
    record(ledger, Relationship(tenant, drifted, RESELLER), "B")
    sandbox.add_customer(in_sync, tenant=tenant)
    sandbox.add_customer(drifted, tenant=tenant, relationships=[RESELLER])
    sandbox.set_identifier(in_sync, "A", tenant=tenant)
    sandbox.set_identifier(drifted, "other", tenant=tenant, reseller_id=RESELLER)

    # When verify prints JSON
    result = ccsync_verify(
        worker_env(broker_url, sandbox_server.url, redis_url), "--tenant", tenant, "--json"
    )

    # Then one object per relationship, the summary on standard error, exit 1 for the drift
    assert result.exit_code == 1, result.output
    objects = {o["customerId"]: o for o in json_lines(result.stdout)}
    assert set(objects) == {in_sync, drifted}
    for document in objects.values():
        assert set(document) >= JSON_KEYS
    assert objects[in_sync] | {"eventId": None, "appliedAt": None} == {
        "tenant": tenant,
        "customerId": in_sync,
        "resellerId": None,
        "expected": "A",
        "actual": "A",
        "status": "in-sync",
        "eventId": None,
        "appliedAt": None,
    }
    assert objects[drifted]["resellerId"] == RESELLER
    assert (objects[drifted]["expected"], objects[drifted]["actual"]) == ("B", "other")
    assert objects[drifted]["status"] == "drift"
    assert objects[drifted]["appliedAt"].endswith("Z")
    assert "checked 2: 1 in-sync, 1 drift" in result.stderr


def test_given_drift_without_yes_and_no_terminal_then_nothing_is_repaired(
    broker_url: str, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxControl
) -> None:
    tenant = unique_tenant()
    customer = str(uuid.uuid4())
    record(Ledger.from_url(REDIS_URL), Relationship(tenant, customer, None), "A")
    sandbox.add_customer(customer, tenant=tenant)
    result = ccsync_verify(
        worker_env(broker_url, sandbox_server.url, redis_url), "--tenant", tenant, "--repair"
    )
    assert result.exit_code == 2
    assert "--repair --yes" in result.output
    assert identifier(sandbox, customer) is None


# --- worker.ops.verify over a ledger of its own ----------------------------------------------


@pytest.fixture
def ledger() -> Ledger:
    return Ledger.from_url(REDIS_URL, prefix=f"ccsync-verify-{uuid.uuid4().hex}")


@pytest.fixture
def api(sandbox_server: SandboxServer) -> Iterator[CloudCockpitClient]:
    with httpx.Client(timeout=10) as http:
        yield CloudCockpitClient(
            http, base_url=sandbox_server.url, tokens=StaticToken("sandbox-token")
        )


def make_verifier(ledger: Ledger, api: CloudCockpitClient, pace: Pace | None = None) -> Verifier:
    return Verifier(
        ledger=ledger,
        api=api,
        pace=pace,
        unanswered_hold_seconds=30,
        call_lease_seconds=10,
        read_retry_pause_seconds=0.05,
    )


def record(
    ledger: Ledger,
    relationship: Relationship,
    value: str | None,
    *,
    occurred_at: datetime = T0,
    applied_at: datetime | None = None,
    known: bool = True,
) -> None:
    """What the worker leaves in the ledger after applying ``value`` (or, ``known`` False, what
    the version before values were kept left)."""
    micros = (occurred_at - datetime(1, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    key = f"{micros + 86_400_000_000:020d}|evt-{uuid.uuid4().hex[:8]}"
    when = (applied_at or datetime.now(UTC)).timestamp()
    raw = format_record(key, value, applied_at=when) if known else key
    client = redis.Redis.from_url(REDIS_URL)
    client.set(ledger.applied_key(relationship), raw, ex=3600)
    client.close()


def checked(
    ledger: Ledger, api: CloudCockpitClient, value: str, sandbox: SandboxControl | None = None
) -> tuple[Relationship, Verifier, Check]:
    """A customer of a new tenant, ``value`` recorded as applied to it, checked once: a drift
    (with ``sandbox``, the sandbox knows the customer, without that value)."""
    relationship = Relationship(unique_tenant(), str(uuid.uuid4()), None)
    if sandbox is not None:
        sandbox.add_customer(relationship.customer_id, tenant=relationship.tenant)
    record(ledger, relationship, value)
    verifier = make_verifier(ledger, api)
    [check] = verifier.checks(Filters(tenant=relationship.tenant))
    return relationship, verifier, check


def test_given_each_case_then_in_sync_drift_missing_and_unknown_are_told_apart(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given customers CloudCockpit knows, one it never knew, and a relationship it does not have
    sandbox.configure(auto_create_customers=False)
    tenant = unique_tenant()
    same, other, cleared, gone, legacy = (str(uuid.uuid4()) for _ in range(5))
    for customer in (same, other, cleared, legacy):
        sandbox.add_customer(customer, tenant=tenant)
        sandbox.set_identifier(customer, "X", tenant=tenant)
    sandbox.add_customer(gone, tenant=tenant)
    record(ledger, Relationship(tenant, same, None), "X")
    record(ledger, Relationship(tenant, other, None), "Y")
    record(ledger, Relationship(tenant, cleared, None), None)
    record(ledger, Relationship(tenant, legacy, None), "X", known=False)
    record(ledger, Relationship(tenant, gone, None), "X")
    record(ledger, Relationship(tenant, str(uuid.uuid4()), None), "X")  # a customer unknown
    record(ledger, Relationship(tenant, same, RESELLER), "X")  # a relationship it lacks
    sandbox.forget_customer(gone)

    # When every relationship is checked
    checks = list(make_verifier(ledger, api).checks(Filters()))

    # Then each is what it is
    by_case = {(c.relationship.customer_id, c.relationship.reseller_id): c for c in checks}
    assert len(checks) == 7
    assert by_case[(same, None)].status is Status.IN_SYNC
    assert (by_case[(other, None)].status, by_case[(other, None)].actual) == (Status.DRIFT, "X")
    assert by_case[(cleared, None)].status is Status.DRIFT
    assert by_case[(cleared, None)].to_json()["expected"] is None
    unknown = by_case[(legacy, None)]
    assert (unknown.status, unknown.expected, unknown.actual) == (Status.UNKNOWN, None, "X")
    assert by_case[(gone, None)].status is Status.MISSING
    assert by_case[(gone, None)].detail == "no such customer"
    assert by_case[(same, RESELLER)].status is Status.MISSING
    assert by_case[(same, RESELLER)].detail == "no such relationship"
    assert sorted(c.status.value for c in checks).count("missing") == 3


def test_given_filters_then_only_matching_relationships_are_read(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given relationships of two tenants, applied a day ago and now
    mine, theirs = unique_tenant(), unique_tenant()
    customer = str(uuid.uuid4())
    yesterday = datetime.now(UTC) - timedelta(days=1)
    record(ledger, Relationship(mine, customer, None), "A", applied_at=yesterday)
    record(ledger, Relationship(mine, customer, RESELLER), "A")
    record(ledger, Relationship(mine, str(uuid.uuid4()), None), "A")
    record(ledger, Relationship(theirs, str(uuid.uuid4()), None), "A")
    old_legacy = str(uuid.uuid4())
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    record(ledger, Relationship(mine, old_legacy, None), "A", occurred_at=long_ago, known=False)
    verifier = make_verifier(ledger, api)

    def checked(filters: Filters) -> set[tuple[str, str, str | None]]:
        return {
            (c.relationship.tenant, c.relationship.customer_id, c.relationship.reseller_id)
            for c in verifier.checks(filters)
        }

    # Then the tenant filter takes any case, the customer filter both its relationships
    assert len(checked(Filters(tenant=mine.upper()))) == 4
    assert checked(Filters(customer_id=uuid.UUID(customer))) == {
        (mine, customer, None),
        (mine, customer, RESELLER),
    }
    # And since goes by when ccsync applied it (the event's time for a record without one)
    recent = checked(Filters(tenant=mine, since=datetime.now(UTC) - timedelta(hours=1)))
    assert (mine, customer, RESELLER) in recent and (mine, customer, None) not in recent
    assert (mine, old_legacy, None) not in recent
    assert len(recent) == 2
    assert verifier.count(Filters(tenant=theirs)) == 1
    # And a filtered-out relationship is never read back
    assert all(e["headers"].get("x-tenant") != theirs for e in sandbox.journal())


def test_given_a_rate_then_the_reads_are_spread_out(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given six relationships
    tenant = unique_tenant()
    for _ in range(6):
        record(ledger, Relationship(tenant, str(uuid.uuid4()), None), None)
    sandbox.clear_journal()

    # When they are checked at 5 calls a second
    started = time.monotonic()
    checks = list(make_verifier(ledger, api, Pace(5)).checks(Filters()))
    took = time.monotonic() - started

    # Then the six reads took at least five intervals, none closer than one to the next
    assert [c.status for c in checks] == [Status.IN_SYNC] * 6  # auto-created: null, as recorded
    received = sorted(e["receivedAt"] for e in sandbox.journal() if e["method"] == "GET")
    assert len(received) == 6
    assert took >= 5 * 0.2 - 0.01
    assert min(b - a for a, b in itertools.pairwise(received)) >= 0.2 - 0.02


def test_given_the_tenants_rate_budget_spent_by_a_worker_then_verify_reads_wait_for_their_slots(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given a budget of 5 calls a second, of which a worker reserved the next second's
    tenant = unique_tenant()
    for _ in range(3):
        record(ledger, Relationship(tenant, str(uuid.uuid4()), None), None)
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"ccsync-verify-{uuid.uuid4().hex}"
    worker_budget = RateBudget(client, per_second=5, prefix=prefix)
    worker_budget.reserve_all([tenant] * 5)
    sandbox.clear_journal()

    # When verify checks the tenant's three relationships, on the same budget
    started = time.time()
    verifier = Verifier(
        ledger=ledger,
        api=api,
        budget=RateBudget(client, per_second=5, prefix=prefix),
        unanswered_hold_seconds=30,
        call_lease_seconds=10,
    )
    checks = list(verifier.checks(Filters(tenant=tenant)))
    client.close()

    # Then its reads came after the worker's second, one slot (0.2 s) apart
    assert [c.status for c in checks] == [Status.IN_SYNC] * 3
    received = sorted(e["receivedAt"] for e in sandbox.journal() if e["method"] == "GET")
    assert received[0] - started >= 1.0 - 0.05
    assert min(b - a for a, b in itertools.pairwise(received)) >= 0.2 - 0.02


def test_given_a_transient_failure_then_the_read_is_tried_again_and_then_reported_as_error(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    tenant = unique_tenant()
    record(ledger, Relationship(tenant, str(uuid.uuid4()), None), None)
    sandbox.set_outage({"status": 503})
    [check] = make_verifier(ledger, api).checks(Filters())
    assert check.status is Status.ERROR and check.detail is not None and "503" in check.detail
    assert len([e for e in sandbox.journal() if e["method"] == "GET"]) == 3


def test_given_a_newer_event_applied_after_the_check_then_the_repair_writes_nothing(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given a drift found
    relationship, verifier, check = checked(ledger, api, "OLD-NEWEST", sandbox)
    tenant, customer = relationship.tenant, relationship.customer_id
    assert check.status is Status.DRIFT
    # When a newer event is applied before the repair (the worker records it)
    sandbox.set_identifier(customer, "NEWER", tenant=tenant)
    record(ledger, relationship, "NEWER", occurred_at=T0 + timedelta(seconds=1))
    sandbox.clear_journal()

    # Then the repair is superseded: no write, the newer value stays
    repair = verifier.repair(check)
    assert repair.outcome is RepairOutcome.SUPERSEDED
    assert [e for e in sandbox.journal() if e["method"] == "PATCH"] == []
    assert identifier(sandbox, customer) == "NEWER"


def test_given_an_event_holding_the_relationship_then_the_repair_waits_for_it(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given a drift, and an event of the relationship in flight (its lock held)
    relationship, verifier, check = checked(ledger, api, "V1")
    customer = relationship.customer_id
    hold = ledger.acquire(relationship, "evt-in-flight")
    outcomes: list[RepairOutcome] = []
    repairing = threading.Thread(target=lambda: outcomes.append(verifier.repair(check).outcome))
    repairing.start()
    time.sleep(0.5)
    # Then nothing is written while the event holds it
    assert [e for e in sandbox.journal(customer_id=customer) if e["method"] == "PATCH"] == []
    # When the event ends without applying anything, the repair goes through
    ledger.leave_all([hold])
    repairing.join(10)
    assert outcomes == [RepairOutcome.REPAIRED]
    assert identifier(sandbox, customer) == "V1"


def test_given_a_repair_without_an_answer_then_the_relationship_stays_held(
    ledger: Ledger, api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    relationship, verifier, check = checked(ledger, api, "V1")
    sandbox.add_faults(relationship.customer_id, {"status": 502})
    assert verifier.repair(check).outcome is RepairOutcome.FAILED
    # A newer event cannot take it now: a late write of the repair could land after it
    assert ledger.try_acquire_all([(relationship, "evt-newer", None)]) == [None]


def _short_lock_ledgers() -> tuple[Ledger, Ledger]:
    """Two ledgers on one key space: one whose locks are taken for 1 s (the repair's, so that
    its fenced lease is what keeps it), one with the worker's locks (60 s)."""
    prefix = f"ccsync-verify-{uuid.uuid4().hex}"
    return (
        Ledger.from_url(REDIS_URL, prefix=prefix, lock_ttl_seconds=1),
        Ledger.from_url(REDIS_URL, prefix=prefix),
    )


def _short_lease_verifier(ledger: Ledger, api: CloudCockpitClient, pace: Pace | None) -> Verifier:
    """A verifier whose fenced lease (0.1 s, plus the fence's margin) a wait can outlast."""
    return Verifier(
        ledger=ledger,
        api=api,
        pace=pace,
        unanswered_hold_seconds=30,
        call_lease_seconds=0.1,
        read_retry_pause_seconds=0.05,
    )


def test_given_a_slow_rate_then_the_repair_waits_for_it_before_it_fences(
    api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given locks taken for 1 s, and a drift found at 0.4 calls a second (2.5 s between calls):
    # longer than the lock and its fenced lease
    ledger, worker_ledger = _short_lock_ledgers()
    relationship = Relationship(unique_tenant(), str(uuid.uuid4()), None)
    sandbox.add_customer(relationship.customer_id, tenant=relationship.tenant)
    record(ledger, relationship, "V1")
    verifier = _short_lease_verifier(ledger, api, Pace(0.4))
    [check] = verifier.checks(Filters(tenant=relationship.tenant))
    assert check.status is Status.DRIFT
    sandbox.clear_journal()
    outcomes: list[RepairOutcome] = []
    repairing = threading.Thread(target=lambda: outcomes.append(verifier.repair(check).outcome))
    repairing.start()
    # When an event takes the relationship while the repair waits for its turn (after a fenced
    # lease would have run out), and keeps it
    time.sleep(2.3)
    [taken] = worker_ledger.try_acquire_all([(relationship, "evt-newer", None)])
    repairing.join(15)

    # Then the repair never wrote while the event held the relationship
    patches = [e for e in sandbox.journal() if e["method"] == "PATCH"]
    if taken is not None:
        assert patches == [], "the repair wrote while an event held the relationship"
        assert outcomes == [RepairOutcome.BUSY]
    else:
        assert outcomes == [RepairOutcome.REPAIRED]


def test_given_a_repair_whose_lease_ran_out_during_its_call_then_it_is_not_reported_repaired(
    api: CloudCockpitClient, sandbox: SandboxControl
) -> None:
    # Given a drift, and CloudCockpit answering the repair's PATCH after its lease ran out
    ledger, _ = _short_lock_ledgers()
    relationship = Relationship(unique_tenant(), str(uuid.uuid4()), None)
    sandbox.add_customer(relationship.customer_id, tenant=relationship.tenant)
    record(ledger, relationship, "V1")
    verifier = _short_lease_verifier(ledger, api, None)
    [check] = verifier.checks(Filters(tenant=relationship.tenant))
    sandbox.add_faults(relationship.customer_id, {"delayMs": 3000})

    # When it is repaired
    repair = verifier.repair(check)

    # Then the write went out, but the repair says it cannot vouch for it: another event could
    # have taken the relationship and written meanwhile
    assert identifier(sandbox, relationship.customer_id) == "V1"
    assert repair.outcome is RepairOutcome.FAILED
    assert "lease" in repair.detail
