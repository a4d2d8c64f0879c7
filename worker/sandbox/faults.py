"""Scripted and random faults the sandbox injects into PATCH calls.

Not thread-safe on its own: ``SandboxState`` calls it under its lock, and the caller (not this
module) sleeps, so no lock is ever held across a delay.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

ANY_CUSTOMER: Final = "*"
DEFAULT_RETRY_AFTER: Final = 1
_NAMED_KINDS: Final = ("timeout", "drop")


class FaultStep(BaseModel):
    """One step of a script: an optional delay, then a status, a dropped connection or nothing.

    A step with only ``delayMs`` adds latency and then handles the request normally. With
    ``undecodable``, the status comes with a body that is not what its ``Content-Encoding: gzip``
    says: no client can read the answer (httpx raises ``DecodingError``).
    """

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )

    status: int | None = Field(default=None, ge=200, le=599)
    retry_after: int | None = Field(default=None, ge=0)
    drop: bool = False
    undecodable: bool = False
    delay_ms: int = Field(default=0, ge=0, le=600_000)
    times: int = Field(default=1, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        if self.status is not None and self.drop:
            raise ValueError("a step either answers a status or drops the connection, not both")
        if self.undecodable and self.status in (None, 204, 304):
            raise ValueError("undecodable goes with a status whose answer has a body")
        if self.status is None and not self.drop and self.delay_ms == 0:
            raise ValueError("a step needs status, drop or delayMs")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retryAfter goes with a status")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_defaults=True)


class RandomFaults(BaseModel):
    """A fraction ``rate`` of PATCH calls get a fault of a kind drawn from ``kinds``.

    Kinds: an HTTP status as a string ("500", "503", "429"), "timeout" (hang ``timeoutMs`` and then
    answer normally, as a slow server whose client gave up would) or "drop".
    """

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )

    rate: float = Field(ge=0.0, le=1.0)
    kinds: tuple[str, ...] = Field(default=("500", "503", "timeout", "drop"), min_length=1)
    timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    retry_after: int = Field(default=DEFAULT_RETRY_AFTER, ge=0)
    seed: int | None = None

    @field_validator("kinds", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # Statuses arrive as numbers as often as strings; both mean the same kind.
        if isinstance(value, list | tuple):
            return tuple(str(kind) for kind in value)
        return value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        for kind in kinds:
            if kind not in _NAMED_KINDS and not (kind.isdigit() and 200 <= int(kind) <= 599):
                raise ValueError(f"unknown kind {kind!r}: use a status 200-599, timeout or drop")
        return kinds

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


@dataclass(frozen=True, slots=True)
class Fault:
    """What happens to one request; ``kind`` is what the journal shows."""

    kind: str
    delay_s: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    undecodable: bool = False


class RateLimit(BaseModel):
    """At most ``callsPerSecond`` PATCH and GET calls per tenant (X-Tenant) in each second of the
    sandbox's clock (fixed one-second windows); every call beyond is answered 429 with
    ``Retry-After: retryAfter``, as an API gateway's per-tenant quota would."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )

    calls_per_second: int = Field(ge=1, le=1_000_000)
    retry_after: int = Field(default=DEFAULT_RETRY_AFTER, ge=0)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class TenantWindows:
    """The calls each tenant made in the current one-second window of a ``RateLimit``."""

    def __init__(self) -> None:
        self._window = -1
        self._calls: dict[str, int] = {}

    def refused(self, limit: RateLimit, tenant: str, now: float) -> Fault | None:
        """Counts a call of ``tenant`` at ``now`` (seconds); its 429 when over the limit."""
        window = int(now)
        if window != self._window:
            self._window = window
            self._calls.clear()
        calls = self._calls.get(tenant, 0) + 1
        self._calls[tenant] = calls
        if calls <= limit.calls_per_second:
            return None
        return Fault("rate-limited", status=429, retry_after=limit.retry_after)


def outage_fault(step: FaultStep) -> Fault:
    """The fault every call gets during a whole-API outage; the journal marks it as such."""
    fault = _from_step(step)
    return replace(fault, kind=f"outage-{fault.kind}")


def _from_step(step: FaultStep) -> Fault:
    delay = step.delay_ms / 1000
    if step.drop:
        return Fault("drop", delay, drop=True)
    if step.undecodable:
        return Fault(f"{step.status}-undecodable", delay, step.status, undecodable=True)
    if step.status is not None:
        return Fault(str(step.status), delay, step.status, step.retry_after)
    return Fault("delay", delay)


class FaultBook:
    def __init__(self) -> None:
        # Per customer id (or "*"): the pending steps, each with how many times it still applies.
        self._scripts: dict[str, deque[list[Any]]] = {}
        self._random: RandomFaults | None = None
        self._rng = random.Random()

    def add(self, customer_key: str, steps: list[FaultStep]) -> int:
        """Appends steps to a customer's script; returns how many calls the script now covers."""
        script = self._scripts.setdefault(customer_key, deque())
        script.extend([step, step.times] for step in steps)
        return sum(remaining for _, remaining in script)

    def clear(self) -> None:
        self._scripts.clear()
        self._random = None

    def clear_scripts(self) -> None:
        self._scripts.clear()

    @property
    def random(self) -> RandomFaults | None:
        return self._random

    def set_random(self, config: RandomFaults | None) -> None:
        self._random = config
        self._rng = random.Random(config.seed if config is not None else None)

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        return {
            key: [{**step.to_json(), "times": remaining} for step, remaining in script]
            for key, script in self._scripts.items()
        }

    def next_fault(self, customer_key: str | None) -> Fault | None:
        """Consumes the next step for this customer, else for "*", else maybe a random fault."""
        keys = (ANY_CUSTOMER,) if customer_key is None else (customer_key, ANY_CUSTOMER)
        for key in keys:
            script = self._scripts.get(key)
            if script:
                entry = script[0]
                entry[1] -= 1
                if entry[1] == 0:
                    script.popleft()
                    if not script:
                        del self._scripts[key]
                return _from_step(entry[0])
        config = self._random
        if config is None or config.rate == 0 or self._rng.random() >= config.rate:
            return None
        kind = self._rng.choice(config.kinds)
        if kind == "drop":
            return Fault("drop", drop=True)
        if kind == "timeout":
            return Fault("timeout", config.timeout_ms / 1000)
        status = int(kind)
        return Fault(kind, status=status, retry_after=config.retry_after if status == 429 else None)
