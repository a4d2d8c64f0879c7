"""What the sandbox received: the PATCH calls of one customer, and waiting for one to succeed."""

from __future__ import annotations

from typing import Any

from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl


def patches(sandbox: SandboxControl, customer_id: str) -> list[dict[str, Any]]:
    return [dict(e) for e in sandbox.journal(customer_id=customer_id) if e["method"] == "PATCH"]


def wait_applied(sandbox: SandboxControl, customer_id: str) -> list[dict[str, Any]]:
    """The customer's PATCH calls, once the last of them succeeded."""
    return wait_until(
        lambda: (calls := patches(sandbox, customer_id)) and calls[-1]["status"] == 204 and calls,
        timeout=30,
        what=f"customer {customer_id} to be applied",
    )
