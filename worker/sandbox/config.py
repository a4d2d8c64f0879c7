"""How a sandbox is configured: options at start, and what ``PUT /_sandbox/config`` may change."""

from __future__ import annotations

from typing import Any, Final, TypedDict

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from worker.sandbox.faults import FaultStep, RandomFaults, RateLimit

DEFAULT_CLIENT_ID: Final = "sandbox-client"
DEFAULT_CLIENT_SECRET: Final = "sandbox-secret"
DEFAULT_STATIC_TOKEN: Final = "sandbox-token"
DEFAULT_SCOPE: Final = "api://b92a36a4-feb8-4f47-a69c-29a180aa6d0a/.default"


class SandboxOptions(BaseModel):
    """How a sandbox starts; ``POST /_sandbox/reset`` returns to these."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    # None accepts any scope; the default is CloudCockpit's documented one
    # (docs/cloudcockpit-api.md).
    scope: str | None = DEFAULT_SCOPE
    static_tokens: list[str] = Field(default_factory=lambda: [DEFAULT_STATIC_TOKEN])
    token_ttl_seconds: int = Field(default=3599, ge=1)
    auto_create_customers: bool = True
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    journal_limit: int = Field(default=200_000, ge=1)
    random_faults: RandomFaults | None = None
    rate_limit: RateLimit | None = None


class ConfigUpdate(BaseModel):
    """Body of ``PUT /_sandbox/config``: absent fields keep their value; ``random: null`` stops."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    auto_create_customers: bool | None = None
    token_ttl_seconds: int | None = Field(default=None, ge=1)
    random: RandomFaults | None = None
    # While set, every PATCH and GET gets this fault: the whole API is down, probes included.
    outage: FaultStep | None = None
    # While set, each tenant's calls beyond this many a second are refused (429, Retry-After).
    rate_limit: RateLimit | None = None


class ConfigView(TypedDict):
    latencyMs: int
    autoCreateCustomers: bool
    tokenTtlSeconds: int
    random: dict[str, Any] | None
    outage: dict[str, Any] | None
    rateLimit: dict[str, Any] | None
