"""The sandbox over real sockets: CloudCockpit's endpoints, the token endpoint, faults, controls."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from worker.sandbox import (
    FaultStep,
    RandomFaults,
    SandboxControl,
    SandboxControlError,
    SandboxOptions,
    SandboxServer,
)
from worker.sandbox.state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE

TENANT = "portal.example.com"
TOKEN = "integration-token"
REPO = Path(__file__).resolve().parents[2]
# CloudCockpit's OpenAPI description as the package ships it: the one the sandbox claims to serve.
SPEC = files("worker.sandbox") / "openapi.yaml"


def new_id() -> str:
    return str(uuid.uuid4())


def patch_path(customer_id: str) -> str:
    return f"/v1/Customers/{customer_id}/internal-identifier"


def headers(**extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "X-Tenant": TENANT,
        "X-Correlation-Id": new_id(),
        **extra,
    }


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(static_tokens=[TOKEN], token_ttl_seconds=600)) as running:
        yield running


@pytest.fixture
def control(server: SandboxServer) -> Iterator[SandboxControl]:
    with server.control() as ctl:
        ctl.reset()
        yield ctl


@pytest.fixture
def api(server: SandboxServer, control: SandboxControl) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


def wait_for_journal(control: SandboxControl, count: int) -> list[Any]:
    deadline = time.monotonic() + 3
    while len(entries := control.journal()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return entries


# --- CloudCockpit's endpoints -------------------------------------------------------------------


def test_given_a_valid_patch_when_sent_then_204_readable_by_get_and_journaled(
    api: httpx.Client, control: SandboxControl
) -> None:
    customer, reseller = new_id(), new_id()
    sent = headers()
    body = {"internalIdentifier": "ERP-1", "resellerId": reseller}
    response = api.patch(patch_path(customer), json=body, headers=sent)
    assert (response.status_code, response.content) == (204, b"")
    read = api.get(f"/v1/Customers/{customer}", params={"resellerId": reseller}, headers=headers())
    assert read.json() == {"id": customer, "internalIdentifier": "ERP-1", "resellerId": reseller}
    patched = control.journal(customer_id=customer)[0]
    assert (patched["method"], patched["status"], patched["fault"]) == ("PATCH", 204, None)
    assert patched["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert patched["headers"]["x-correlation-id"] == sent["X-Correlation-Id"]
    assert patched["body"] == body
    assert patched["receivedAt"] <= patched["respondedAt"]
    assert control.state() == [
        {"id": customer, "tenant": TENANT, "relationships": {reseller: "ERP-1"}}
    ]


def test_given_no_or_bad_auth_when_patched_then_401_with_no_body(api: httpx.Client) -> None:
    for auth in ({}, {"Authorization": "Bearer nope"}):
        sent = {"X-Tenant": TENANT, **auth}
        response = api.patch(patch_path(new_id()), json={}, headers=sent)
        assert (response.status_code, response.content) == (401, b"")
        assert response.headers["content-length"] == "0"


def test_given_invalid_input_when_patched_then_400_error_body_names_properties(
    api: httpx.Client,
) -> None:
    sent = headers(**{"X-Correlation-Id": new_id()})
    sent.pop("X-Tenant")
    response = api.patch(patch_path("123"), json={"internalIdentifier": "x" * 256}, headers=sent)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert error["correlationId"] == sent["X-Correlation-Id"]
    names = [item["propertyName"] for item in error["errors"]]
    assert names == ["X-Tenant", "customerId", "internalIdentifier"]


def test_given_auto_create_off_when_unknown_then_404_and_403(
    api: httpx.Client, control: SandboxControl
) -> None:
    control.configure(auto_create_customers=False)
    known = new_id()
    control.add_customer(known, tenant=TENANT, relationships=[None])
    missing = api.patch(patch_path(new_id()), json={}, headers=headers())
    assert (missing.status_code, missing.json()["type"]) == (404, "NotFound")
    forbidden = api.patch(patch_path(known), json={"resellerId": new_id()}, headers=headers())
    assert (forbidden.status_code, forbidden.content) == (403, b"")
    assert (
        api.patch(
            patch_path(known), json={"internalIdentifier": "K"}, headers=headers()
        ).status_code
        == 204
    )
    read = api.get(f"/v1/Customers/{known}", params={"resellerId": new_id()}, headers=headers())
    assert read.status_code == 403
    assert api.get(f"/v1/Customers/{new_id()}", headers=headers()).status_code == 404


def test_given_a_chunked_body_when_patched_then_it_is_read_whole(api: httpx.Client) -> None:
    chunks = iter([b'{"internalIdentifier":', b' "CHUNKED"}'])
    sent = headers(**{"Content-Type": "application/json"})
    assert api.patch(patch_path(new_id()), content=chunks, headers=sent).status_code == 204


def test_given_a_bad_content_length_when_sent_then_400_and_connection_closed(
    server: SandboxServer,
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PATCH /v1/Customers/x/internal-identifier HTTP/1.1\r\n")
        sock.sendall(b"Host: h\r\nContent-Length: abc\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in answer


def test_given_many_calls_on_one_connection_when_sent_then_keep_alive_serves_them(
    server: SandboxServer, control: SandboxControl
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        assert _patch_three_customers(connection) == [204, 204, 204]
        assert connection.sock is not None, "the server kept the connection open"
    finally:
        connection.close()


def _patch_three_customers(connection: http.client.HTTPConnection) -> list[int]:
    """Three PATCHes, one after the other on ``connection``: their statuses."""
    statuses = []
    for _ in range(3):
        sent = headers(**{"Content-Type": "application/json"})
        connection.request("PATCH", patch_path(new_id()), b"{}", sent)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    return statuses


# --- tokens -------------------------------------------------------------------------------------


def test_given_credentials_when_token_issued_then_used_expired_and_renewed(
    api: httpx.Client, control: SandboxControl
) -> None:
    form = {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "grant_type": "client_credentials",
        "scope": DEFAULT_SCOPE,
    }
    token_url = "/4e806121-ff28-4286-ab4e-3be0a08f9ce0/oauth2/v2.0/token"
    issued = api.post(token_url, data=form).json()
    assert (issued["token_type"], issued["expires_in"]) == ("Bearer", 600)
    bearer = headers(Authorization=f"Bearer {issued['access_token']}")
    assert api.patch(patch_path(new_id()), json={}, headers=bearer).status_code == 204
    control.expire_tokens()
    assert api.patch(patch_path(new_id()), json={}, headers=bearer).status_code == 401
    renewed = api.post("/oauth2/v2.0/token", data=form).json()["access_token"]
    assert renewed != issued["access_token"]
    assert (
        api.patch(
            patch_path(new_id()), json={}, headers=headers(Authorization=f"Bearer {renewed}")
        ).status_code
        == 204
    )
    rejected = api.post("/oauth2/v2.0/token", data=form | {"client_secret": "wrong"})
    assert (rejected.status_code, rejected.json()["error"]) == (401, "invalid_client")
    secrets_seen = [e["body"]["client_secret"] for e in control.journal() if "token" in e["path"]]
    assert secrets_seen == ["***", "***", "***"]


# --- faults -------------------------------------------------------------------------------------


def test_given_a_status_script_when_patched_then_faults_in_order_then_normal(
    api: httpx.Client, control: SandboxControl
) -> None:
    customer = new_id()
    pending = control.add_faults(
        customer,
        FaultStep(status=500),
        {"status": 503, "times": 2},
        FaultStep(status=429, retry_after=2),
        FaultStep(status=401),
    )
    assert pending == 5
    answers = [api.patch(patch_path(customer), json={}, headers=headers()) for _ in range(6)]
    assert [a.status_code for a in answers] == [500, 503, 503, 429, 401, 204]
    assert answers[0].json()["type"] == "InternalServerError"
    assert answers[3].headers["retry-after"] == "2"
    assert answers[4].content == b""
    assert api.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 204
    kinds = [entry["fault"] for entry in control.journal(customer_id=customer)]
    assert kinds == ["500", "503", "503", "429", "401", None]


def test_given_a_drop_step_when_patched_then_connection_closes_without_a_byte(
    api: httpx.Client, control: SandboxControl
) -> None:
    control.add_faults("*", FaultStep(drop=True))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.patch(patch_path(new_id()), json={}, headers=headers())
    assert api.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 204
    assert [entry["fault"] for entry in control.journal()] == ["drop", None]


def test_given_delay_and_latency_when_patched_then_answers_come_late(
    api: httpx.Client, control: SandboxControl
) -> None:
    control.configure(latency_ms=100)
    control.add_faults("*", FaultStep(delay_ms=200))
    started = time.monotonic()
    assert api.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 204
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert api.get(f"/v1/Customers/{new_id()}", headers=headers()).status_code == 200
    assert 0.1 <= time.monotonic() - started < 0.3
    assert control.journal()[0]["fault"] == "delay"


def test_given_random_faults_when_patched_then_each_kind_happens(
    server: SandboxServer, control: SandboxControl
) -> None:
    control.set_random_faults(RandomFaults(rate=1.0, kinds=("503",)))
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(5.0, read=0.15)) as client:
        assert client.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 503
        control.set_random_faults(RandomFaults(rate=1.0, kinds=("timeout",), timeout_ms=400))
        with pytest.raises(httpx.ReadTimeout):
            client.patch(patch_path(new_id()), json={}, headers=headers())
        control.set_random_faults(RandomFaults(rate=1.0, kinds=("drop",)))
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.patch(patch_path(new_id()), json={}, headers=headers())
        control.set_random_faults(None)
        assert client.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 204
    entries = wait_for_journal(control, 4)
    assert sorted(str(entry["fault"]) for entry in entries) == ["503", "None", "drop", "timeout"]
    timed_out = next(entry for entry in entries if entry["fault"] == "timeout")
    assert timed_out["status"] == 204, "a hung call still lands, as a slow server's would"


def test_given_faults_when_cleared_then_calls_are_normal_again(
    api: httpx.Client, control: SandboxControl
) -> None:
    control.add_faults("*", FaultStep(status=500, times=10))
    control.set_random_faults(RandomFaults(rate=1.0, kinds=("500",)))
    assert control.faults()["scripts"]["*"][0]["times"] == 10
    control.clear_faults()
    assert control.config()["random"] is None
    assert api.patch(patch_path(new_id()), json={}, headers=headers()).status_code == 204


def test_given_a_bad_control_call_when_sent_then_control_error(control: SandboxControl) -> None:
    with pytest.raises(SandboxControlError, match="400"):
        control.add_faults("not-a-uuid", {"status": 500})
    with pytest.raises(SandboxControlError, match="400"):
        control.add_faults("*", {"status": 500, "drop": True})
    assert control.health()


# --- performance shape --------------------------------------------------------------------------


def test_given_64_connections_at_100ms_when_patching_then_they_run_in_parallel(
    server: SandboxServer, control: SandboxControl
) -> None:
    control.configure(latency_ms=100)
    port = int(server.url.rsplit(":", 1)[1])
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            answered = _patch_three_customers(connection)
        finally:
            connection.close()
        with lock:
            statuses.extend(answered)

    threads = [threading.Thread(target=client) for _ in range(64)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [204] * 192
    assert elapsed < 2.0, f"192 calls of 100 ms over 64 connections took {elapsed:.2f}s"


# --- lifecycle ----------------------------------------------------------------------------------


def test_given_a_running_server_when_stopped_then_keep_alive_connections_end() -> None:
    with SandboxServer(SandboxOptions(static_tokens=[TOKEN])) as sandbox:
        port = int(sandbox.url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/_sandbox/health")
        assert connection.getresponse().read() == b'{"status":"ok"}'
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.request("GET", "/_sandbox/health")
            connection.getresponse()
    finally:
        connection.close()
    with pytest.raises(RuntimeError):
        _ = sandbox.url


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_given_run_sandbox_when_signalled_then_it_prints_its_url_and_exits(signum: int) -> None:
    code = (
        "from worker.sandbox import run_sandbox, SandboxOptions;"
        "run_sandbox('127.0.0.1', 0, SandboxOptions())"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        with SandboxControl(url) as remote:
            assert remote.health()
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# --- agreement with openapi.yaml ----------------------------------------------------------------


def load_spec() -> dict[str, Any]:
    if not SPEC.is_file():
        pytest.fail(f"{SPEC} is missing: the sandbox is checked against CloudCockpit's spec")
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


BODY_SAMPLE = [
    {"internalIdentifier": "ERP-42", "resellerId": None},
    {"internalIdentifier": None, "resellerId": "0F8FAD5B-D9CB-469F-A165-70867728950E"},
    {},
    {"internalIdentifier": ""},
    {"internalIdentifier": "é" * 255},
    {"internalIdentifier": "😀" * 255},
    {"internalIdentifier": "x" * 256},
    {"internalIdentifier": 42},
    {"internalIdentifier": True},
    {"internalIdentifier": {"value": "A"}},
    {"resellerId": "not-a-uuid"},
    {"resellerId": "{0f8fad5b-d9cb-469f-a165-70867728950e}"},
    {"resellerId": "0f8fad5bd9cb469fa16570867728950e"},
    {"resellerId": 12},
    {"internalIdentifier": "A", "extra": 1},
    {"InternalIdentifier": "A"},
    ["internalIdentifier"],
    "internalIdentifier",
    7,
    None,
]


def test_given_sample_bodies_when_patched_then_sandbox_rejects_exactly_what_openapi_rejects(
    api: httpx.Client, control: SandboxControl
) -> None:
    spec = load_spec()
    operation = spec["paths"]["/v1/Customers/{customerId}/internal-identifier"]["patch"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    body_validator = OAS30Validator(request_schema, format_checker=oas30_format_checker)
    error_validator = OAS30Validator(spec["components"]["schemas"]["Error"])
    for body in BODY_SAMPLE:
        sent = headers(**{"Content-Type": "application/json"})
        response = api.patch(patch_path(new_id()), content=json.dumps(body), headers=sent)
        assert response.status_code in (204, 400), body
        if response.status_code == 400:
            error_validator.validate(response.json())
    entries = control.journal()
    assert len(entries) == len(BODY_SAMPLE)
    accepted = [entry for entry in entries if entry["status"] == 204]
    assert len(accepted) == 6
    for entry in entries:
        schema_accepts = body_validator.is_valid(entry["body"])
        assert schema_accepts == (entry["status"] == 204), entry["body"]


def test_given_error_and_read_answers_when_checked_then_they_match_openapi(
    api: httpx.Client, control: SandboxControl
) -> None:
    spec = load_spec()
    error_validator = OAS30Validator(spec["components"]["schemas"]["Error"])
    get_schema = spec["paths"]["/v1/Customers/{customerId}"]["get"]["responses"]["200"]
    read_validator = OAS30Validator(
        get_schema["content"]["application/json"]["schema"], format_checker=oas30_format_checker
    )
    customer = new_id()
    api.patch(patch_path(customer), json={"internalIdentifier": "A"}, headers=headers())
    read_validator.validate(api.get(f"/v1/Customers/{customer}", headers=headers()).json())
    control.configure(auto_create_customers=False)
    control.add_faults("*", FaultStep(status=500))
    for response in (
        api.patch(patch_path(new_id()), json={}, headers=headers()),
        api.patch(patch_path(new_id()), json={}, headers=headers()),
        api.get(f"/v1/Customers/{new_id()}", headers=headers()),
    ):
        assert response.status_code in (404, 500)
        error_validator.validate(response.json())
