"""``SandboxControl``: a typed client of the sandbox's ``/_sandbox/`` controls.

For tests, the demo and benchmarks; it never touches the CloudCockpit endpoints themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self, cast

import httpx

from worker.sandbox.faults import FaultStep, RandomFaults, RateLimit
from worker.sandbox.journal import JournalEntry
from worker.sandbox.state import ConfigView
from worker.sandbox.store import CustomerSpec, CustomerView


class SandboxControlError(RuntimeError):
    """A control call was refused; the message carries the sandbox's explanation."""


class SandboxControl:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=f"{self.base_url}/_sandbox", timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        payload: object = None,
        *,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        response = self._client.request(method, path, json=payload, params=params)
        if response.status_code != 200:
            raise SandboxControlError(
                f"{method} /_sandbox{path} answered {response.status_code}: {response.text}"
            )
        return response.json()

    def health(self) -> bool:
        try:
            self._call("GET", "/health")
        except (httpx.HTTPError, SandboxControlError):
            return False
        return True

    def reset(self) -> None:
        """Forgets customers, journal and faults; restores the sandbox's starting options."""
        self._call("POST", "/reset")

    def config(self) -> ConfigView:
        return cast(ConfigView, self._call("GET", "/config"))

    def configure(
        self,
        *,
        latency_ms: int | None = None,
        auto_create_customers: bool | None = None,
        token_ttl_seconds: int | None = None,
    ) -> ConfigView:
        update = {
            "latencyMs": latency_ms,
            "autoCreateCustomers": auto_create_customers,
            "tokenTtlSeconds": token_ttl_seconds,
        }
        payload = {name: value for name, value in update.items() if value is not None}
        return cast(ConfigView, self._call("PUT", "/config", payload))

    def set_random_faults(self, random_faults: RandomFaults | None) -> ConfigView:
        """Starts random faults, or stops them with None."""
        payload = {"random": None if random_faults is None else random_faults.to_json()}
        return cast(ConfigView, self._call("PUT", "/config", payload))

    def set_outage(self, fault: FaultStep | Mapping[str, Any] | None) -> ConfigView:
        """Every PATCH and GET answered with ``fault`` (e.g. ``{"status": 503}``) until None."""
        outage = fault.to_json() if isinstance(fault, FaultStep) else fault
        return cast(ConfigView, self._call("PUT", "/config", {"outage": outage}))

    def set_rate_limit(self, rate_limit: RateLimit | None) -> ConfigView:
        """Each tenant's calls beyond ``rate_limit`` a second answered 429, until None."""
        payload = {"rateLimit": None if rate_limit is None else rate_limit.to_json()}
        return cast(ConfigView, self._call("PUT", "/config", payload))

    def add_customer(
        self,
        customer_id: str,
        *,
        tenant: str | None = None,
        relationships: Sequence[str | None] = (None,),
    ) -> None:
        """Registers a customer; a relationship None is the caller's own, a UUID a reseller's."""
        self.add_customers(
            [CustomerSpec(id=customer_id, tenant=tenant, relationships=tuple(relationships))]
        )

    def add_customers(self, customers: Iterable[CustomerSpec]) -> None:
        payload = {"customers": [customer.model_dump() for customer in customers]}
        self._call("POST", "/customers", payload)

    def set_identifier(
        self,
        customer_id: str,
        internal_identifier: str | None,
        *,
        tenant: str | None = None,
        reseller_id: str | None = None,
    ) -> None:
        """Changes a stored identifier behind the clients' back, as someone in CloudCockpit's
        portal would (no request in the journal); the customer and relationship must exist."""
        payload = {
            "customerId": customer_id,
            "tenant": tenant,
            "resellerId": reseller_id,
            "internalIdentifier": internal_identifier,
        }
        self._call("PUT", "/identifiers", payload)

    def forget_customer(self, customer_id: str) -> int:
        """Removes the customer (under every tenant): reads and writes of it then answer 404."""
        return int(
            self._call("DELETE", "/customers", params={"customerId": customer_id})["forgotten"]
        )

    def add_faults(self, customer_id: str, *steps: FaultStep | Mapping[str, Any]) -> int:
        """Appends steps for a customer id or "*"; returns the PATCH calls the script now covers."""
        script = [step.to_json() if isinstance(step, FaultStep) else dict(step) for step in steps]
        answer = self._call("POST", "/faults", {"customerId": customer_id, "script": script})
        return int(answer["pending"])

    def faults(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/faults"))

    def clear_faults(self) -> None:
        """Clears scripted and random faults."""
        self._call("DELETE", "/faults")

    def expire_tokens(self) -> None:
        self._call("POST", "/tokens/expire")

    def journal(
        self, *, customer_id: str | None = None, since: int | None = None
    ) -> list[JournalEntry]:
        params: dict[str, str | int] = {}
        if customer_id is not None:
            params["customerId"] = customer_id
        if since is not None:
            params["since"] = since
        return cast(list[JournalEntry], self._call("GET", "/journal", params=params)["entries"])

    def clear_journal(self) -> None:
        self._call("DELETE", "/journal")

    def state(self) -> list[CustomerView]:
        return cast(list[CustomerView], self._call("GET", "/state")["customers"])
