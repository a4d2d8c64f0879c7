"""The sandbox's logic, without HTTP: store, tokens, faults, journal, and CloudCockpit's answers.

The HTTP layer calls ``admit`` (which fault and how long to wait), sleeps outside any lock, then
``respond`` and ``record``. One lock guards everything and is only held for dictionary work.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote

from worker.sandbox.auth import (
    TOKEN_PATH_SUFFIX,
    ClientCredentials,
    TokenStore,
    bearer_token,
    check_token_request,
    redacted_form,
    token_reply,
)
from worker.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_SCOPE,
    DEFAULT_STATIC_TOKEN,
    ConfigUpdate,
    ConfigView,
    SandboxOptions,
)
from worker.sandbox.faults import (
    Fault,
    FaultBook,
    FaultStep,
    RateLimit,
    TenantWindows,
    outage_fault,
)
from worker.sandbox.journal import Journal, JournalEntry, JournalRecord, pack_headers
from worker.sandbox.protocol import (
    ApiRequest,
    ErrorItem,
    Reply,
    canonical_uuid,
    error_reply,
    json_reply,
    parse_patch_body,
    property_error,
    request_errors,
    validation_reply,
)
from worker.sandbox.store import (
    CustomerSpec,
    CustomerStore,
    CustomerView,
    IdentifierOverwrite,
    Lookup,
)

_PATCH_PATH = re.compile(r"/v1/Customers/([^/]+)/internal-identifier")
_GET_PATH = re.compile(r"/v1/Customers/([^/]+)")
_NO_CONTENT: Final = Reply(204)
_FORBIDDEN: Final = Reply(403)
_UNAUTHORIZED: Final = Reply(401, headers=(("WWW-Authenticate", "Bearer"),))
_EXPIRED: Final = Reply(
    401,
    headers=(("WWW-Authenticate", 'Bearer error="invalid_token", error_description="expired"'),),
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_SCOPE",
    "DEFAULT_STATIC_TOKEN",
    "ConfigUpdate",
    "ConfigView",
    "CustomerSpec",
    "CustomerView",
    "JournalEntry",
    "SandboxOptions",
    "SandboxState",
]


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``admit`` decided for a request before the HTTP layer waits ``delay_s``."""

    route: str  # "patch", "get", "token", "not-allowed" or "unknown"
    customer_raw: str | None
    # The customer as faults and the journal know it: lower-case when a UUID, else as sent.
    customer_key: str | None
    delay_s: float
    fault: Fault | None
    allow: str | None = None


def _route(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(route, raw customerId, Allow header for 405)."""
    if match := _PATCH_PATH.fullmatch(path):
        return ("patch" if method == "PATCH" else "not-allowed"), unquote(match[1]), "PATCH"
    if match := _GET_PATH.fullmatch(path):
        return ("get" if method == "GET" else "not-allowed"), unquote(match[1]), "GET"
    if path.endswith(TOKEN_PATH_SUFFIX):
        return ("token" if method == "POST" else "not-allowed"), None, "POST"
    return "unknown", None, None


class SandboxState:
    def __init__(self, options: SandboxOptions | None = None) -> None:
        self.options = options if options is not None else SandboxOptions()
        self._credentials = ClientCredentials(
            self.options.client_id, self.options.client_secret, self.options.scope
        )
        self._static_tokens = frozenset(self.options.static_tokens)
        self._lock = threading.Lock()
        self._customers = CustomerStore()
        self._tokens = TokenStore()
        self._faults = FaultBook()
        self._journal = Journal(self.options.journal_limit)
        self._apply_options()

    def _apply_options(self) -> None:
        self._latency_ms = self.options.latency_ms
        self._auto_create = self.options.auto_create_customers
        self._token_ttl = self.options.token_ttl_seconds
        self._faults.set_random(self.options.random_faults)
        self._outage: FaultStep | None = None
        self._rate_limit: RateLimit | None = self.options.rate_limit
        self._windows = TenantWindows()

    # --- CloudCockpit side -------------------------------------------------------------------

    def admit(self, request: ApiRequest) -> Plan:
        route, customer_raw, allow = _route(request.method, request.path)
        customer_key = (
            None if customer_raw is None else canonical_uuid(customer_raw) or customer_raw
        )
        with self._lock:
            delay = self._latency_ms / 1000
            fault: Fault | None = None
            if self._outage is not None and route in ("patch", "get"):
                fault = outage_fault(self._outage)
            elif self._rate_limit is not None and route in ("patch", "get"):
                tenant = request.headers.get("x-tenant") or ""
                fault = self._windows.refused(self._rate_limit, tenant, time.monotonic())
            if fault is None and route == "patch":
                fault = self._faults.next_fault(customer_key)
        if fault is not None:
            delay += fault.delay_s
        return Plan(route, customer_raw, customer_key, delay, fault, allow)

    def respond(self, request: ApiRequest, plan: Plan) -> Reply | None:
        """The reply to send, or None to drop the connection without a byte."""
        correlation = request.headers.get("x-correlation-id")
        fault = plan.fault
        if fault is not None and fault.drop:
            return None
        if fault is not None and fault.undecodable:
            assert fault.status is not None  # FaultStep requires one
            return _undecodable_reply(fault.status)
        if fault is not None and fault.status is not None:
            return self._fault_reply(
                fault.status, retry_after=fault.retry_after, correlation=correlation
            )
        if plan.route in ("patch", "get") and plan.customer_raw is not None:
            denied = self._authenticate(request)
            if denied is not None:
                return denied
            errors, customer_id = request_errors(request.headers, plan.customer_raw)
            serve = self._patch if plan.route == "patch" else self._get
            return serve(request, errors, customer_id)
        if plan.route == "token":
            return self._token(request)
        if plan.route == "not-allowed":
            description = f"{request.method} is not allowed on {request.path}."
            return error_reply(
                405,
                description,
                correlation_id=correlation,
                headers=(("Allow", plan.allow or ""),),
            )
        return error_reply(404, f"No endpoint at {request.path}.", correlation_id=correlation)

    def record(
        self,
        request: ApiRequest,
        plan: Plan,
        reply: Reply | None,
        *,
        received_at: float,
        responded_at: float,
    ) -> None:
        record = JournalRecord(
            method=request.method,
            path=request.target,
            customer_id=plan.customer_key,
            headers=pack_headers(request.headers),
            body=redacted_form(request.body) if plan.route == "token" else request.body,
            status=None if reply is None else reply.status,
            received_at=received_at,
            responded_at=responded_at,
            fault=None if plan.fault is None else plan.fault.kind,
        )
        with self._lock:
            self._journal.append(record)

    @staticmethod
    def _fault_reply(status: int, *, retry_after: int | None, correlation: str | None) -> Reply:
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        if status in (401, 403) or status < 400:
            return Reply(status, headers=headers)
        return error_reply(
            status, "Fault injected by the sandbox.", correlation_id=correlation, headers=headers
        )

    def _authenticate(self, request: ApiRequest) -> Reply | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return _UNAUTHORIZED
        if token in self._static_tokens:
            return None
        with self._lock:
            status = self._tokens.status(token, time.monotonic())
        if status == "valid":
            return None
        return _EXPIRED if status == "expired" else _UNAUTHORIZED

    def _patch(
        self, request: ApiRequest, errors: list[ErrorItem], customer_id: str | None
    ) -> Reply:
        correlation = request.headers.get("x-correlation-id")
        body, body_errors = parse_patch_body(request.body, request.headers.get("content-type"))
        errors.extend(body_errors)
        if errors or customer_id is None or body is None:
            return validation_reply(errors, correlation)
        tenant = request.headers["x-tenant"]
        with self._lock:
            lookup = self._customers.update(
                tenant=tenant,
                customer_id=customer_id,
                reseller_id=body.reseller_id,
                internal_identifier=body.internal_identifier,
                auto_create=self._auto_create,
            )
        if lookup in ("no-customer", "no-relationship"):
            return _refusal(lookup, customer_id=customer_id, correlation=correlation)
        return _NO_CONTENT

    def _get(self, request: ApiRequest, errors: list[ErrorItem], customer_id: str | None) -> Reply:
        correlation = request.headers.get("x-correlation-id")
        reseller_raw = request.query.get("resellerId", [""])[0]
        reseller_id = canonical_uuid(reseller_raw) if reseller_raw else None
        if reseller_raw and reseller_id is None:
            errors.append(property_error("resellerId", f"'{reseller_raw}' is not a valid UUID."))
        if errors or customer_id is None:
            return validation_reply(errors, correlation)
        with self._lock:
            lookup = self._customers.read(
                tenant=request.headers["x-tenant"],
                customer_id=customer_id,
                reseller_id=reseller_id,
                auto_create=self._auto_create,
            )
        if lookup in ("no-customer", "no-relationship"):
            return _refusal(lookup, customer_id=customer_id, correlation=correlation)
        payload = {"id": customer_id, "internalIdentifier": lookup[0], "resellerId": reseller_id}
        return json_reply(200, payload)

    def _token(self, request: ApiRequest) -> Reply:
        rejection = check_token_request(request.headers, request.body, self._credentials)
        if rejection is not None:
            return rejection
        with self._lock:
            ttl = self._token_ttl
            token = self._tokens.issue(ttl, time.monotonic())
        return token_reply(token, ttl)

    # --- controls ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets customers, journal and faults and restores the starting options; tokens stay."""
        with self._lock:
            self._customers.clear()
            self._journal.clear()
            self._faults.clear()
            self._apply_options()

    def config(self) -> ConfigView:
        with self._lock:
            random_faults = self._faults.random
            return {
                "latencyMs": self._latency_ms,
                "autoCreateCustomers": self._auto_create,
                "tokenTtlSeconds": self._token_ttl,
                "random": None if random_faults is None else random_faults.to_json(),
                "outage": None if self._outage is None else self._outage.to_json(),
                "rateLimit": None if self._rate_limit is None else self._rate_limit.to_json(),
            }

    def configure(self, update: ConfigUpdate) -> ConfigView:
        with self._lock:
            if update.latency_ms is not None:
                self._latency_ms = update.latency_ms
            if update.auto_create_customers is not None:
                self._auto_create = update.auto_create_customers
            if update.token_ttl_seconds is not None:
                self._token_ttl = update.token_ttl_seconds
            if "random" in update.model_fields_set:
                self._faults.set_random(update.random)
            if "outage" in update.model_fields_set:
                self._outage = update.outage
            if "rate_limit" in update.model_fields_set:
                self._rate_limit = update.rate_limit
        return self.config()

    def register_customers(self, specs: list[CustomerSpec]) -> int:
        with self._lock:
            for spec in specs:
                self._customers.register(spec)
        return len(specs)

    def overwrite_identifier(self, change: IdentifierOverwrite) -> Lookup:
        """Changes a stored identifier behind the clients' back (no request, no journal entry)."""
        with self._lock:
            return self._customers.overwrite(change)

    def forget_customer(self, customer_id: str) -> int:
        with self._lock:
            return self._customers.forget(customer_id)

    def add_faults(self, customer_key: str, steps: list[FaultStep]) -> int:
        """Appends a script for a customer id or "*"; returns the calls it now covers."""
        key = canonical_uuid(customer_key) or customer_key
        with self._lock:
            return self._faults.add(key, steps)

    def clear_faults(self) -> None:
        """Clears scripts and random faults alike."""
        with self._lock:
            self._faults.clear()

    def faults(self) -> dict[str, Any]:
        with self._lock:
            random_faults = self._faults.random
            return {
                "scripts": self._faults.pending(),
                "random": None if random_faults is None else random_faults.to_json(),
            }

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.expire_all()

    def journal(
        self, customer_id: str | None = None, since: int | None = None
    ) -> list[JournalEntry]:
        key = None if customer_id is None else canonical_uuid(customer_id) or customer_id
        with self._lock:
            records = self._journal.query(key, since)
        return [record.to_entry() for record in records]

    def last_seq(self) -> int:
        with self._lock:
            return self._journal.last_seq

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def snapshot(self) -> list[CustomerView]:
        with self._lock:
            return self._customers.snapshot()


def _undecodable_reply(status: int) -> Reply:
    """``status`` with a body that is not the gzip its ``Content-Encoding`` announces."""
    return Reply(
        status,
        b'{"not": "gzip"}',
        "application/json; charset=utf-8",
        (("Content-Encoding", "gzip"),),
    )


def _refusal(
    lookup: Literal["no-customer", "no-relationship"],
    *,
    customer_id: str | None,
    correlation: str | None,
) -> Reply:
    """A customer CloudCockpit does not know (404), or not under this reseller (403)."""
    if lookup == "no-relationship":
        return _FORBIDDEN
    return error_reply(404, f"Customer {customer_id} was not found.", correlation_id=correlation)
