"""The sandbox's logic without HTTP: validation, store, tokens, faults, journal, controls."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import ValidationError

from worker.sandbox.controls import handle_control
from worker.sandbox.faults import FaultBook, FaultStep, RandomFaults, RateLimit, TenantWindows
from worker.sandbox.protocol import ApiRequest, Reply, canonical_uuid, parse_patch_body
from worker.sandbox.state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_SCOPE,
    ConfigUpdate,
    CustomerSpec,
    SandboxOptions,
    SandboxState,
)

TENANT = "portal.example.com"
TOKEN = "static-token"


def new_id() -> str:
    return str(uuid.uuid4())


def make_state(**options: Any) -> SandboxState:
    return SandboxState(SandboxOptions(static_tokens=[TOKEN], **options))


def request(
    method: str,
    path: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    query: dict[str, list[str]] | None = None,
) -> ApiRequest:
    merged = {
        "authorization": f"Bearer {TOKEN}",
        "x-tenant": TENANT,
        "x-correlation-id": new_id(),
        "content-type": "application/json",
    }
    merged.update(headers or {})
    payload = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    return ApiRequest(method, path, path, query or {}, merged, payload)


def send(state: SandboxState, req: ApiRequest) -> Reply | None:
    plan = state.admit(req)
    reply = state.respond(req, plan)
    state.record(req, plan, reply, received_at=1.0, responded_at=2.0)
    return reply


def patch(state: SandboxState, customer_id: str, body: object, **kwargs: Any) -> Reply:
    reply = send(
        state, request("PATCH", f"/v1/Customers/{customer_id}/internal-identifier", body, **kwargs)
    )
    assert reply is not None
    return reply


def get(
    state: SandboxState, customer_id: str, reseller_id: str | None = None, **kwargs: Any
) -> Reply:
    query = {} if reseller_id is None else {"resellerId": [reseller_id]}
    reply = send(state, request("GET", f"/v1/Customers/{customer_id}", query=query, **kwargs))
    assert reply is not None
    return reply


def token_request(form: dict[str, str], headers: dict[str, str] | None = None) -> ApiRequest:
    merged = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
    return ApiRequest(
        "POST", "/t/oauth2/v2.0/token", "/t/oauth2/v2.0/token", {}, merged, urlencode(form).encode()
    )


GOOD_FORM = {
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
    "grant_type": "client_credentials",
    "scope": DEFAULT_SCOPE,
}


def body_of(reply: Reply) -> Any:
    return json.loads(reply.body)


# --- the PATCH body and identifiers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0F8FAD5B-D9CB-469F-A165-70867728950E", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("{0f8fad5b-d9cb-469f-a165-70867728950e}", None),
        ("0f8fad5bd9cb469fa16570867728950e", None),
        ("0f8fad5b-d9cb-469f-a165-70867728950e\n", None),
        ("not-a-uuid", None),
    ],
)
def test_given_a_string_when_canonicalised_then_only_hyphenated_uuids_pass(
    value: str, expected: str | None
) -> None:
    assert canonical_uuid(value) == expected


@pytest.mark.parametrize(
    ("body", "bad_properties"),
    [
        (b'{"internalIdentifier": "A", "resellerId": null}', []),
        (b"{}", []),
        (b'{"internalIdentifier": null}', []),
        ('{"internalIdentifier": "' + "x" * 255 + '"}', []),
        ('{"internalIdentifier": "' + "x" * 256 + '"}', ["internalIdentifier"]),
        (b'{"internalIdentifier": 5}', ["internalIdentifier"]),
        (b'{"resellerId": "nope"}', ["resellerId"]),
        (b'{"resellerId": 7}', ["resellerId"]),
        (b'{"InternalIdentifier": "A", "extra": 1}', ["InternalIdentifier", "extra"]),
        (b"[]", ["$"]),
        (b"not json", ["$"]),
        (b"", ["$"]),
        (b'{"internalIdentifier": NaN}', ["$"]),
    ],
)
def test_given_a_patch_body_when_parsed_then_each_offending_property_is_named(
    body: bytes | str, bad_properties: list[str]
) -> None:
    raw = body.encode() if isinstance(body, str) else body
    parsed, errors = parse_patch_body(raw, "application/json; charset=utf-8")
    assert [error["propertyName"] for error in errors] == bad_properties
    assert (parsed is None) == bool(bad_properties)


def test_given_a_non_json_content_type_when_parsed_then_content_type_is_named() -> None:
    _, errors = parse_patch_body(b"{}", "text/plain")
    assert errors[0]["propertyName"] == "Content-Type"


# --- PATCH and GET ------------------------------------------------------------------------------


def test_given_a_valid_call_when_patched_then_204_and_the_relationship_is_stored() -> None:
    state = make_state()
    customer, reseller = new_id(), new_id()
    assert patch(state, customer, {"internalIdentifier": "A", "resellerId": None}).status == 204
    assert (
        patch(state, customer, {"internalIdentifier": "B", "resellerId": reseller.upper()}).status
        == 204
    )
    [view] = state.snapshot()
    assert view == {
        "id": customer,
        "tenant": TENANT,
        "relationships": {"self": "A", reseller: "B"},
    }
    assert body_of(get(state, customer, reseller)) == {
        "id": customer,
        "internalIdentifier": "B",
        "resellerId": reseller,
    }


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic abc", "Bearer unknown"])
def test_given_no_valid_bearer_when_patched_then_401_without_body(
    authorization: str | None,
) -> None:
    state = make_state()
    req = request("PATCH", f"/v1/Customers/{new_id()}/internal-identifier", {"bad": 1})
    headers = dict(req.headers)
    if authorization is None:
        del headers["authorization"]
    else:
        headers["authorization"] = authorization
    reply = send(state, ApiRequest(req.method, req.target, req.path, {}, headers, req.body))
    assert reply is not None
    assert (reply.status, reply.body) == (401, b"")


def test_given_bad_headers_path_and_body_when_patched_then_one_400_names_them_all() -> None:
    state = make_state()
    reply = patch(
        state,
        "not-a-uuid",
        {"internalIdentifier": 1},
        headers={"x-tenant": "", "x-correlation-id": "corr-1"},
    )
    error = body_of(reply)
    assert reply.status == 400
    assert error["type"] == "ValidationError"
    assert error["correlationId"] == "corr-1"
    assert [item["propertyName"] for item in error["errors"]] == [
        "X-Tenant",
        "X-Correlation-Id",
        "customerId",
        "internalIdentifier",
    ]


def test_given_auto_create_off_when_customer_unknown_then_404_with_error_body() -> None:
    state = make_state(auto_create_customers=False)
    correlation = new_id()
    reply = patch(
        state, new_id(), {"internalIdentifier": "A"}, headers={"x-correlation-id": correlation}
    )
    assert reply.status == 404
    assert body_of(reply) | {"description": None} == {
        "statusCode": 404,
        "type": "NotFound",
        "description": None,
        "correlationId": correlation,
        "errors": None,
    }
    assert state.snapshot() == []


def test_given_auto_create_off_when_relationship_unknown_then_403_and_known_ones_work() -> None:
    state = make_state(auto_create_customers=False)
    customer, reseller = new_id(), new_id()
    state.register_customers([CustomerSpec(id=customer, relationships=(None, reseller))])
    assert patch(state, customer, {"resellerId": new_id()}).status == 403
    assert patch(state, customer, {"internalIdentifier": "S"}).status == 204
    assert patch(state, customer, {"internalIdentifier": "R", "resellerId": reseller}).status == 204
    assert get(state, customer, new_id()).status == 403
    assert body_of(get(state, customer))["internalIdentifier"] == "S"


def test_given_a_customer_of_one_tenant_when_another_tenant_calls_then_it_is_unknown() -> None:
    state = make_state(auto_create_customers=False)
    scoped, shared = new_id(), new_id()
    state.register_customers([CustomerSpec(id=scoped, tenant="a.example"), CustomerSpec(id=shared)])
    other = {"x-tenant": "b.example"}
    assert patch(state, scoped, {"internalIdentifier": "X"}, headers=other).status == 404
    assert (
        patch(state, scoped, {"internalIdentifier": "X"}, headers={"x-tenant": "A.example"}).status
        == 204
    )
    assert patch(state, shared, {"internalIdentifier": "X"}, headers=other).status == 204


def test_given_auto_create_on_when_an_unknown_customer_is_read_then_null_and_nothing_stored() -> (
    None
):
    state = make_state()
    customer = new_id()
    reply = get(state, customer)
    assert (reply.status, body_of(reply)["internalIdentifier"]) == (200, None)
    assert state.snapshot() == []


def test_given_auto_create_off_when_an_unknown_customer_is_read_then_404() -> None:
    state = make_state(auto_create_customers=False)
    assert get(state, new_id()).status == 404


def test_given_a_bad_reseller_query_when_read_then_400_names_it() -> None:
    state = make_state()
    reply = get(state, new_id(), "nope")
    assert reply.status == 400
    assert body_of(reply)["errors"][0]["propertyName"] == "resellerId"


def test_given_unknown_path_or_method_when_called_then_404_or_405() -> None:
    state = make_state()
    unknown = send(state, request("GET", "/v2/elsewhere"))
    assert unknown is not None and unknown.status == 404
    wrong = send(state, request("POST", f"/v1/Customers/{new_id()}/internal-identifier"))
    assert wrong is not None and wrong.status == 405
    assert ("Allow", "PATCH") in wrong.headers


# --- tokens -------------------------------------------------------------------------------------


def test_given_good_credentials_when_a_token_is_asked_then_it_authorises_until_expired() -> None:
    state = make_state(token_ttl_seconds=120)
    reply = send(state, token_request(GOOD_FORM))
    assert reply is not None and reply.status == 200
    answer = body_of(reply)
    assert (answer["token_type"], answer["expires_in"]) == ("Bearer", 120)
    bearer = {"authorization": f"Bearer {answer['access_token']}"}
    assert patch(state, new_id(), {}, headers=bearer).status == 204
    state.expire_tokens()
    expired = patch(state, new_id(), {}, headers=bearer)
    assert (expired.status, expired.body) == (401, b"")
    assert patch(state, new_id(), {}).status == 204, "static tokens never expire"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_secret": ""}, 401, "invalid_client"),
        ({"client_id": "someone"}, 400, "unauthorized_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
        ({"scope": ""}, 400, "invalid_request"),
        ({"scope": "api://other/.default"}, 400, "invalid_scope"),
    ],
)
def test_given_bad_credentials_when_a_token_is_asked_then_entra_like_error(
    change: dict[str, str], status: int, error: str
) -> None:
    reply = send(make_state(), token_request(GOOD_FORM | change))
    assert reply is not None and reply.status == status
    answer = body_of(reply)
    assert answer["error"] == error
    assert answer["error_description"].startswith("AADSTS")
    assert "wrong" not in reply.body.decode(), "the secret is never echoed"


def test_given_basic_credentials_when_a_token_is_asked_then_it_is_issued() -> None:
    basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    form = {"grant_type": "client_credentials", "scope": DEFAULT_SCOPE}
    reply = send(make_state(), token_request(form, {"authorization": f"Basic {basic}"}))
    assert reply is not None and reply.status == 200


def test_given_a_token_call_when_journaled_then_the_secret_is_redacted() -> None:
    state = make_state()
    send(state, token_request(GOOD_FORM))
    [entry] = state.journal()
    assert entry["body"]["client_secret"] == "***"
    assert entry["body"]["client_id"] == DEFAULT_CLIENT_ID


# --- faults -------------------------------------------------------------------------------------


def test_given_scripts_when_faults_are_drawn_then_customer_first_then_any_then_none() -> None:
    book = FaultBook()
    customer = new_id()
    book.add("*", [FaultStep(status=503)])
    pending = book.add(customer, [FaultStep(status=500, times=2), FaultStep(drop=True)])
    assert pending == 3
    kinds = [getattr(book.next_fault(customer), "kind", None) for _ in range(5)]
    assert kinds == ["500", "500", "drop", "503", None]


def test_given_a_delay_step_when_drawn_then_it_delays_without_a_status() -> None:
    book = FaultBook()
    book.add("*", [FaultStep(delay_ms=250), FaultStep(status=429, retry_after=3)])
    delay, limited = book.next_fault(None), book.next_fault(None)
    assert delay is not None and (delay.kind, delay.delay_s, delay.status) == ("delay", 0.25, None)
    assert limited is not None and (limited.status, limited.retry_after) == (429, 3)


@pytest.mark.parametrize(
    "step",
    [
        {},
        {"status": 500, "drop": True},
        {"retryAfter": 2, "drop": True},
        {"status": 99},
        {"x": 1},
        {"undecodable": True},
        {"status": 204, "undecodable": True},
    ],
)
def test_given_a_malformed_step_when_validated_then_refused(step: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultStep.model_validate(step)


def test_given_random_faults_with_a_seed_when_drawn_then_reproducible() -> None:
    config = RandomFaults(rate=0.5, kinds=("500", "timeout", "drop", "429"), timeout_ms=300, seed=7)
    draws = []
    for _ in range(2):
        book = FaultBook()
        book.set_random(config)
        draws.append([getattr(book.next_fault(None), "kind", None) for _ in range(40)])
    assert draws[0] == draws[1]
    assert {"500", "timeout", "drop", "429", None} <= set(draws[0])


def test_given_random_kinds_as_numbers_when_validated_then_accepted_and_unknown_refused() -> None:
    assert RandomFaults.model_validate({"rate": 1, "kinds": [500, "drop"]}).kinds == ("500", "drop")
    with pytest.raises(ValidationError):
        RandomFaults.model_validate({"rate": 1, "kinds": ["explode"]})


def test_given_a_status_fault_when_patched_then_error_body_except_401_403() -> None:
    state = make_state()
    customer = new_id()
    state.add_faults(
        customer,
        [FaultStep(status=500), FaultStep(status=403), FaultStep(status=429, retry_after=2)],
    )
    server_error = patch(state, customer, {"internalIdentifier": "A"})
    assert (server_error.status, body_of(server_error)["type"]) == (500, "InternalServerError")
    assert patch(state, customer, {}).body == b""
    limited = patch(state, customer, {})
    assert ("Retry-After", "2") in limited.headers
    assert body_of(limited)["statusCode"] == 429
    assert patch(state, customer, {"internalIdentifier": "B"}).status == 204
    assert state.snapshot()[0]["relationships"] == {"self": "B"}, "faulted calls change nothing"
    assert [entry["fault"] for entry in state.journal()] == ["500", "403", "429", None]


def test_given_a_drop_fault_when_patched_then_no_reply_and_journal_says_drop() -> None:
    state = make_state()
    state.add_faults("*", [FaultStep(drop=True)])
    assert (
        send(state, request("PATCH", f"/v1/Customers/{new_id()}/internal-identifier", {})) is None
    )
    [entry] = state.journal()
    assert (entry["status"], entry["fault"]) == (None, "drop")


def test_given_an_undecodable_fault_when_patched_then_the_body_is_not_what_its_encoding_says() -> (
    None
):
    state = make_state()
    customer = new_id()
    state.add_faults(customer, [FaultStep(status=200, undecodable=True)])
    reply = patch(state, customer, {"internalIdentifier": "A"})
    assert reply is not None and reply.status == 200
    assert ("Content-Encoding", "gzip") in reply.headers
    with pytest.raises(httpx.DecodingError):
        httpx.Response(200, headers=dict(reply.headers), content=reply.body).read()
    assert all(c["relationships"] == {} for c in state.snapshot()), "a faulted call changes nothing"
    assert [entry["fault"] for entry in state.journal()] == ["200-undecodable"]


def test_given_latency_and_delay_when_admitted_then_delays_add_up() -> None:
    state = make_state(latency_ms=100)
    state.add_faults("*", [FaultStep(delay_ms=50)])
    req = request("PATCH", f"/v1/Customers/{new_id()}/internal-identifier", {})
    assert state.admit(req).delay_s == pytest.approx(0.15)
    assert state.admit(request("GET", f"/v1/Customers/{new_id()}")).delay_s == pytest.approx(0.1)


# --- journal, config, reset, controls -----------------------------------------------------------


def test_given_a_journal_limit_when_exceeded_then_oldest_dropped_and_filters_work() -> None:
    state = make_state(journal_limit=3)
    first, second = new_id(), new_id()
    for customer in (first, second, first, second):
        patch(state, customer, {"internalIdentifier": customer})
    entries = state.journal()
    assert [entry["seq"] for entry in entries] == [2, 3, 4]
    assert [entry["seq"] for entry in state.journal(customer_id=second.upper())] == [2, 4]
    assert [entry["seq"] for entry in state.journal(since=3)] == [4]
    assert entries[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert entries[0]["body"] == {"internalIdentifier": second}
    state.clear_journal()
    patch(state, first, {})
    assert [entry["seq"] for entry in state.journal()] == [5], "sequence survives a clear"


def test_given_runtime_config_when_reset_then_options_return_and_tokens_survive() -> None:
    state = make_state()
    token = body_of(send(state, token_request(GOOD_FORM)) or Reply(0))["access_token"]
    update = ConfigUpdate.model_validate(
        {
            "latencyMs": 5,
            "autoCreateCustomers": False,
            "random": {"rate": 0.5},
            "outage": {"status": 503},
        }
    )
    view = state.configure(update)
    assert (view["latencyMs"], view["autoCreateCustomers"], view["tokenTtlSeconds"]) == (
        5,
        False,
        3599,
    )
    assert view["random"] is not None and view["random"]["rate"] == 0.5
    assert state.configure(ConfigUpdate.model_validate({"random": None}))["random"] is None
    state.add_faults("*", [FaultStep(status=500)])
    state.configure(ConfigUpdate.model_validate({"rateLimit": {"callsPerSecond": 5}}))
    state.reset()
    assert state.config() == {
        "latencyMs": 0,
        "autoCreateCustomers": True,
        "tokenTtlSeconds": 3599,
        "random": None,
        "outage": None,
        "rateLimit": None,
    }
    assert state.journal() == [] and state.faults()["scripts"] == {}
    assert patch(state, new_id(), {}, headers={"authorization": f"Bearer {token}"}).status == 204


def control(state: SandboxState, method: str, path: str, body: object = None) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    reply = handle_control(state, method=method, path=path, query={}, body=raw)
    return reply.status, body_of(reply)


def test_given_control_calls_when_handled_then_json_answers_and_clear_errors() -> None:
    state = make_state()
    customer = new_id()
    assert control(state, "GET", "/_sandbox/health") == (200, {"status": "ok"})
    assert control(state, "POST", "/_sandbox/customers", {"customers": [{"id": customer}]}) == (
        200,
        {"registered": 1},
    )
    status, answer = control(
        state,
        "POST",
        "/_sandbox/faults",
        {"customerId": customer, "script": [{"status": 500, "times": 2}]},
    )
    assert (status, answer["pending"]) == (200, 2)
    assert control(state, "GET", "/_sandbox/state")[1]["customers"][0]["relationships"] == {
        "self": None
    }
    assert control(state, "POST", "/_sandbox/faults", {"customerId": "x", "script": [{}]})[0] == 400
    assert control(state, "PUT", "/_sandbox/config", {"latencyMs": -1})[0] == 400
    assert (
        handle_control(
            state, method="POST", path="/_sandbox/customers", query={}, body=b"{nope"
        ).status
        == 400
    )
    assert control(state, "GET", "/_sandbox/nothing")[0] == 404
    assert control(state, "GET", "/_sandbox/reset")[0] == 405


def test_given_an_outage_then_patch_and_get_fail_until_it_ends() -> None:
    state = make_state()
    customer = new_id()
    state.configure(ConfigUpdate.model_validate({"outage": {"status": 503}}))
    assert patch(state, customer, {"internalIdentifier": "A"}).status == 503
    assert get(state, customer).status == 503
    assert state.journal()[-1]["fault"] == "outage-503"
    state.configure(ConfigUpdate.model_validate({"outage": None}))
    assert patch(state, customer, {"internalIdentifier": "A"}).status == 204
    assert get(state, customer).status == 200


def test_given_a_rate_limit_of_3_then_each_tenants_fourth_call_of_a_second_is_429() -> None:
    state = make_state(rate_limit=RateLimit(calls_per_second=3, retry_after=1))
    body = {"internalIdentifier": "X", "resellerId": None}
    customer = new_id()

    answers = [patch(state, customer, body).status for _ in range(3)]
    refused = patch(state, customer, body)
    other_tenant = get(state, customer, headers={"x-tenant": "other.example.com"})

    assert answers == [204, 204, 204]
    assert refused.status == 429
    assert ("Retry-After", "1") in refused.headers
    assert other_tenant.status == 200
    assert [entry["fault"] for entry in state.journal()][-2:] == ["rate-limited", None]


def test_given_a_rate_limit_then_the_next_second_allows_as_many_again() -> None:
    windows = TenantWindows()
    limit = RateLimit(calls_per_second=2)

    first = [windows.refused(limit, "t", 10.2) for _ in range(3)]
    next_second = [windows.refused(limit, "t", 11.0) for _ in range(2)]

    assert [fault is None for fault in first] == [True, True, False]
    assert next_second == [None, None]
