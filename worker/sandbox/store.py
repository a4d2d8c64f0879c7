"""Known customers of the sandbox and their internal identifier per relationship.

A relationship is keyed by the reseller id, or None for the caller's own (CSP) relationship. A
customer registered without a tenant is visible from every tenant. Not thread-safe: the caller
holds ``SandboxState``'s lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from worker.sandbox.protocol import canonical_uuid

SELF_RELATIONSHIP = "self"

#: Whether the store found the customer and the relationship an update or a read names.
Lookup = Literal["ok", "no-customer", "no-relationship"]


def _uuid(value: str) -> str:
    canonical = canonical_uuid(value)
    if canonical is None:
        raise ValueError(f"{value!r} is not a UUID")
    return canonical


class IdentifierOverwrite(BaseModel):
    """``PUT /_sandbox/identifiers``: a stored identifier changed behind the clients' back, as
    someone in CloudCockpit's portal would. ``tenant`` None: whichever tenant holds the customer."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    customer_id: str
    tenant: str | None = Field(default=None, min_length=1)
    reseller_id: str | None = None
    internal_identifier: str | None

    @field_validator("customer_id", "reseller_id")
    @classmethod
    def _ids_are_uuids(cls, value: str | None) -> str | None:
        return None if value is None else _uuid(value)


class CustomerSpec(BaseModel):
    """One entry of ``POST /_sandbox/customers``; relationships start with no identifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    tenant: str | None = Field(default=None, min_length=1)
    relationships: tuple[str | None, ...] = (None,)

    @field_validator("id")
    @classmethod
    def _id_is_uuid(cls, value: str) -> str:
        return _uuid(value)

    @field_validator("relationships")
    @classmethod
    def _resellers_are_uuids(cls, values: tuple[str | None, ...]) -> tuple[str | None, ...]:
        return tuple(None if value is None else _uuid(value) for value in values)


class CustomerView(TypedDict):
    id: str
    tenant: str | None
    relationships: dict[str, str | None]


@dataclass(slots=True)
class _Customer:
    id: str
    tenant: str | None
    relationships: dict[str | None, str | None] = field(default_factory=dict)


class CustomerStore:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str | None, str], _Customer] = {}

    def _find(self, tenant: str, customer_id: str) -> _Customer | None:
        # Tenants are portal domains, hence compared without case.
        found = self._by_key.get((tenant.casefold(), customer_id))
        return found if found is not None else self._by_key.get((None, customer_id))

    def register(self, spec: CustomerSpec) -> None:
        key = (None if spec.tenant is None else spec.tenant.casefold(), spec.id)
        customer = self._by_key.setdefault(key, _Customer(spec.id, spec.tenant))
        for reseller_id in spec.relationships:
            customer.relationships.setdefault(reseller_id, None)

    def update(
        self,
        *,
        tenant: str,
        customer_id: str,
        reseller_id: str | None,
        internal_identifier: str | None,
        auto_create: bool,
    ) -> Lookup:
        customer = self._find(tenant, customer_id)
        if customer is None:
            if not auto_create:
                return "no-customer"
            customer = _Customer(customer_id, tenant)
            self._by_key[(tenant.casefold(), customer_id)] = customer
        if reseller_id not in customer.relationships and not auto_create:
            return "no-relationship"
        customer.relationships[reseller_id] = internal_identifier
        return "ok"

    def read(
        self, *, tenant: str, customer_id: str, reseller_id: str | None, auto_create: bool
    ) -> Lookup | tuple[str | None]:
        """The identifier (in a 1-tuple, as it may be None) or why there is none.

        With auto-create on, every customer and relationship exists, unset ones reading as null;
        a read never adds to the store.
        """
        customer = self._find(tenant, customer_id)
        if customer is None:
            return (None,) if auto_create else "no-customer"
        if reseller_id in customer.relationships:
            return (customer.relationships[reseller_id],)
        return (None,) if auto_create else "no-relationship"

    def overwrite(self, change: IdentifierOverwrite) -> Lookup:
        """Changes a stored identifier; nothing is created."""
        customer = (
            self._find(change.tenant, change.customer_id)
            if change.tenant is not None
            else next((c for c in self._by_key.values() if c.id == change.customer_id), None)
        )
        if customer is None:
            return "no-customer"
        if change.reseller_id not in customer.relationships:
            return "no-relationship"
        customer.relationships[change.reseller_id] = change.internal_identifier
        return "ok"

    def forget(self, customer_id: str) -> int:
        """Removes the customer under every tenant; how many entries were removed."""
        keys = [key for key, customer in self._by_key.items() if customer.id == customer_id]
        for key in keys:
            del self._by_key[key]
        return len(keys)

    def snapshot(self) -> list[CustomerView]:
        return [
            {
                "id": customer.id,
                "tenant": customer.tenant,
                "relationships": {
                    SELF_RELATIONSHIP if reseller is None else reseller: identifier
                    for reseller, identifier in customer.relationships.items()
                },
            }
            for customer in self._by_key.values()
        ]

    def clear(self) -> None:
        self._by_key.clear()
