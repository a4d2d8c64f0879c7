"""The sandbox's test controls under ``/_sandbox/``: JSON in and out, no authentication."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from worker.sandbox.faults import ANY_CUSTOMER, FaultStep
from worker.sandbox.protocol import Reply, canonical_uuid, json_reply
from worker.sandbox.state import ConfigUpdate, CustomerSpec, SandboxState
from worker.sandbox.store import IdentifierOverwrite

CONTROL_PREFIX: Final = "/_sandbox/"
_OK: Final = {"status": "ok"}

M = TypeVar("M", bound=BaseModel)


class CustomersRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerSpec]


class FaultsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    customer_id: str
    script: list[FaultStep] = Field(min_length=1)

    @field_validator("customer_id")
    @classmethod
    def _uuid_or_any(cls, value: str) -> str:
        if value == ANY_CUSTOMER:
            return value
        return _canonical(value, "is neither a UUID nor '*'")


def _canonical(value: str, otherwise: str) -> str:
    """``value`` as a canonical UUID; a ValueError saying it ``otherwise`` if it is not one."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise ValueError(f"{value!r} {otherwise}")
    return canonical


class ControlError(Exception):
    def __init__(self, status: int, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


Query = Mapping[str, list[str]]
Handler = Callable[[SandboxState, Query, bytes], object]


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise ControlError(400, f"the body is not valid JSON: {exc}") from exc


def _model(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate(_json(body))
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        raise ControlError(400, f"invalid {model.__name__}", details=details) from exc


def _int_param(query: Query, name: str) -> int | None:
    raw = query.get(name, [""])[0]
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ControlError(400, f"{name} must be an integer") from exc


def _reset(state: SandboxState, query: Query, body: bytes) -> object:
    state.reset()
    return _OK


def _get_config(state: SandboxState, query: Query, body: bytes) -> object:
    return state.config()


def _put_config(state: SandboxState, query: Query, body: bytes) -> object:
    return state.configure(_model(ConfigUpdate, body))


def _add_customers(state: SandboxState, query: Query, body: bytes) -> object:
    return {"registered": state.register_customers(_model(CustomersRequest, body).customers)}


def _forget_customer(state: SandboxState, query: Query, body: bytes) -> object:
    raw = query.get("customerId", [""])[0]
    customer_id = canonical_uuid(raw)
    if customer_id is None:
        raise ControlError(400, "customerId must be a UUID")
    return {"forgotten": state.forget_customer(customer_id)}


def _overwrite_identifier(state: SandboxState, query: Query, body: bytes) -> object:
    lookup = state.overwrite_identifier(_model(IdentifierOverwrite, body))
    if lookup != "ok":
        raise ControlError(404, f"{lookup}: nothing to change")
    return _OK


def _get_faults(state: SandboxState, query: Query, body: bytes) -> object:
    return state.faults()


def _add_faults(state: SandboxState, query: Query, body: bytes) -> object:
    request = _model(FaultsRequest, body)
    pending = state.add_faults(request.customer_id, request.script)
    return {"customerId": request.customer_id, "pending": pending}


def _clear_faults(state: SandboxState, query: Query, body: bytes) -> object:
    state.clear_faults()
    return _OK


def _expire_tokens(state: SandboxState, query: Query, body: bytes) -> object:
    state.expire_tokens()
    return _OK


def _get_journal(state: SandboxState, query: Query, body: bytes) -> object:
    customer_id = query.get("customerId", [""])[0] or None
    since = _int_param(query, "since")
    # lastSeq is read first: entries recorded meanwhile are returned by the next poll, not lost.
    last_seq = state.last_seq()
    return {"entries": state.journal(customer_id, since), "lastSeq": last_seq}


def _clear_journal(state: SandboxState, query: Query, body: bytes) -> object:
    state.clear_journal()
    return _OK


def _get_state(state: SandboxState, query: Query, body: bytes) -> object:
    return {"customers": state.snapshot()}


def _health(state: SandboxState, query: Query, body: bytes) -> object:
    return _OK


_ROUTES: Final[dict[str, dict[str, Handler]]] = {
    "reset": {"POST": _reset},
    "config": {"GET": _get_config, "PUT": _put_config},
    "customers": {"POST": _add_customers, "DELETE": _forget_customer},
    "identifiers": {"PUT": _overwrite_identifier},
    "faults": {"GET": _get_faults, "POST": _add_faults, "DELETE": _clear_faults},
    "tokens/expire": {"POST": _expire_tokens},
    "journal": {"GET": _get_journal, "DELETE": _clear_journal},
    "state": {"GET": _get_state},
    "health": {"GET": _health},
}


def handle_control(
    state: SandboxState, *, method: str, path: str, query: Query, body: bytes
) -> Reply:
    methods = _ROUTES.get(path.removeprefix(CONTROL_PREFIX).rstrip("/"))
    if methods is None:
        return json_reply(404, {"error": f"no control at {path}", "controls": sorted(_ROUTES)})
    handler = methods.get(method)
    if handler is None:
        allow = ", ".join(methods)
        return json_reply(
            405, {"error": f"{method} not allowed; use {allow}"}, headers=(("Allow", allow),)
        )
    try:
        return json_reply(200, handler(state, query, body))
    except ControlError as exc:
        return json_reply(exc.status, {"error": str(exc), "details": exc.details})
