"""The call out (contract section 4): the PATCH CloudCockpit receives, tokens, failures."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from worker.cloudcockpit.client import (
    Change,
    ClientPerThread,
    CloudCockpitClient,
    make_http_client,
    make_token_source,
)
from worker.events import correlation_id
from worker.exceptions import (
    ApiRejected,
    ApiUnavailable,
    RateLimited,
    TokenRejected,
    TokenUnavailable,
)
from worker.settings import Settings

OPENAPI = files("worker.sandbox") / "openapi.yaml"
PATCH_PATH = "/v1/Customers/{customerId}/internal-identifier"

BASE_URL = "https://cc.example.test"
TOKEN_URL = "https://login.example.test/t/oauth2/v2.0/token"
TENANT = "portal.example.com"
CUSTOMER = uuid.UUID("3f0e6f43-3b0d-4b1c-9a56-0a7a2b1c1d11")
RESELLER = uuid.UUID("9c1d2e3f-4a5b-4c6d-8e7f-901234567890")
STATIC_TOKEN = "static-tok-51HxQeZ"
CLIENT_SECRET = "client-secret-Zq81"
CORRELATION = correlation_id(TENANT, "evt-1")


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture(scope="module")
def patch_operation() -> dict[str, Any]:
    spec = yaml.safe_load(OPENAPI.read_text("utf-8"))
    operation: dict[str, Any] = spec["paths"][PATCH_PATH]["patch"]
    operation["_components"] = spec["components"]
    return operation


def request_body_validator(operation: dict[str, Any]) -> OAS30Validator:
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def header_validators(operation: dict[str, Any]) -> dict[str, tuple[bool, OAS30Validator]]:
    """Header name -> (required, validator), from the operation's referenced parameters."""
    parameters = operation["_components"]["parameters"]
    found: dict[str, tuple[bool, OAS30Validator]] = {}
    for reference in operation["parameters"]:
        if "$ref" not in reference:
            continue
        parameter = parameters[reference["$ref"].rsplit("/", 1)[-1]]
        if parameter["in"] == "header":
            validator = OAS30Validator(parameter["schema"], format_checker=oas30_format_checker)
            found[parameter["name"]] = (bool(parameter.get("required")), validator)
    return found


class FakeCloudCockpit:
    """A MockTransport handler: a token endpoint and the PATCH, answering as scripted."""

    def __init__(
        self,
        patch_answers: list[Callable[[httpx.Request], httpx.Response]] | None = None,
        token_answer: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.patch_answers = patch_answers or []
        self.token_answer = token_answer
        self.patches: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            self.token_requests.append(request)
            if self.token_answer is not None:
                return self.token_answer(request)
            number = len(self.token_requests)
            return httpx.Response(
                200,
                json={"token_type": "Bearer", "expires_in": 3599, "access_token": f"tok-{number}"},
            )
        self.patches.append(request)
        index = len(self.patches) - 1
        if index < len(self.patch_answers):
            return self.patch_answers[index](request)
        return httpx.Response(204)

    def bearer_tokens(self) -> list[str]:
        return [
            request.headers["authorization"].removeprefix("Bearer ") for request in self.patches
        ]


def answer(status: int, **json_body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=json_body or None)


def static_settings(base_url: str = BASE_URL) -> Settings:
    return Settings(CLOUDCOCKPIT_BASE_URL=base_url, CLOUDCOCKPIT_TOKEN=STATIC_TOKEN)


def client_credentials_settings() -> Settings:
    return Settings(
        CLOUDCOCKPIT_BASE_URL=BASE_URL,
        CLOUDCOCKPIT_CLIENT_ID="client-1",
        CLOUDCOCKPIT_CLIENT_SECRET=CLIENT_SECRET,
        CLOUDCOCKPIT_TOKEN_URL=TOKEN_URL,
    )


def make_client(settings: Settings, fake: FakeCloudCockpit) -> CloudCockpitClient:
    http = make_http_client(settings, transport=httpx.MockTransport(fake))
    return CloudCockpitClient(
        http, base_url=settings.base_url, tokens=make_token_source(settings, http)
    )


def send(
    client: CloudCockpitClient,
    reseller_id: uuid.UUID | None = RESELLER,
    internal_identifier: str | None = "CRM-0042",
) -> None:
    client.set_internal_identifier(
        Change(
            tenant=TENANT,
            customer_id=CUSTOMER,
            reseller_id=reseller_id,
            internal_identifier=internal_identifier,
            correlation_id=CORRELATION,
        )
    )


# --- the request -----------------------------------------------------------------------------


def test_the_patch_has_the_exact_url_method_headers_and_body() -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(), fake))

    (request,) = fake.patches
    assert request.method == "PATCH"
    assert str(request.url) == f"{BASE_URL}/v1/Customers/{CUSTOMER}/internal-identifier"
    assert request.headers["authorization"] == f"Bearer {STATIC_TOKEN}"
    assert request.headers["x-tenant"] == TENANT
    assert request.headers["x-correlation-id"] == str(CORRELATION)
    assert (
        str(uuid.UUID(request.headers["x-correlation-id"])) == request.headers["x-correlation-id"]
    )
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "internalIdentifier": "CRM-0042",
        "resellerId": str(RESELLER),
    }


def test_given_no_reseller_then_the_body_carries_reseller_id_json_null() -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(), fake), reseller_id=None)

    body = json.loads(fake.patches[0].content)
    assert "resellerId" in body
    assert body["resellerId"] is None


def test_given_a_null_identifier_then_the_body_carries_internal_identifier_json_null() -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(), fake), internal_identifier=None)

    assert json.loads(fake.patches[0].content) == {
        "internalIdentifier": None,
        "resellerId": str(RESELLER),
    }


def test_given_a_non_ascii_identifier_then_the_body_is_utf_8_json_of_it() -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(), fake), internal_identifier="Kunde-Ä-東京")

    assert json.loads(fake.patches[0].content.decode("utf-8"))["internalIdentifier"] == (
        "Kunde-Ä-東京"
    )


def test_given_a_base_url_with_a_trailing_slash_then_the_path_has_no_double_slash() -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(base_url=BASE_URL + "/"), fake))

    assert fake.patches[0].url.path == f"/v1/Customers/{CUSTOMER}/internal-identifier"


@pytest.mark.parametrize(
    ("reseller_id", "internal_identifier"),
    [(RESELLER, "CRM-0042"), (None, "CRM-0042"), (RESELLER, None), (None, "x" * 255)],
)
def test_the_body_and_headers_validate_against_openapi_yaml(
    patch_operation: dict[str, Any],
    reseller_id: uuid.UUID | None,
    internal_identifier: str | None,
) -> None:
    fake = FakeCloudCockpit()

    send(make_client(static_settings(), fake), reseller_id, internal_identifier)

    request = fake.patches[0]
    request_body_validator(patch_operation).validate(json.loads(request.content))
    for name, (required, validator) in header_validators(patch_operation).items():
        if required:
            assert name in request.headers
        if name in request.headers:
            validator.validate(request.headers[name])


def test_the_openapi_validator_used_above_does_reject_a_wrong_body(
    patch_operation: dict[str, Any],
) -> None:
    """Guards the test above: the schema is strict enough to catch a wrong body."""
    validator = request_body_validator(patch_operation)

    assert not validator.is_valid({"internalIdentifier": "x", "resellerId": "not-a-uuid"})
    assert not validator.is_valid({"internalIdentifier": "x", "customerId": str(CUSTOMER)})
    assert not validator.is_valid({"internalIdentifier": "x" * 256})


# --- client credentials ----------------------------------------------------------------------


def test_given_client_credentials_then_one_token_request_serves_many_patches() -> None:
    fake = FakeCloudCockpit()
    client = make_client(client_credentials_settings(), fake)

    for _ in range(5):
        send(client)

    assert len(fake.token_requests) == 1
    assert fake.bearer_tokens() == ["tok-1"] * 5


def test_given_a_401_then_the_token_is_renewed_once_and_the_retry_uses_the_new_one() -> None:
    fake = FakeCloudCockpit(patch_answers=[answer(401)])

    send(make_client(client_credentials_settings(), fake))

    assert len(fake.token_requests) == 2
    assert fake.bearer_tokens() == ["tok-1", "tok-2"]
    assert {request.headers["x-correlation-id"] for request in fake.patches} == {str(CORRELATION)}


def test_given_a_401_with_the_renewed_token_too_then_token_rejected() -> None:
    fake = FakeCloudCockpit(patch_answers=[answer(401), answer(401), answer(204)])

    with pytest.raises(TokenRejected) as caught:
        send(make_client(client_credentials_settings(), fake))

    assert caught.value.status == 401
    assert fake.bearer_tokens() == ["tok-1", "tok-2"]
    assert len(fake.token_requests) == 2


def test_given_a_static_token_answered_401_then_token_rejected_after_one_retry() -> None:
    fake = FakeCloudCockpit(patch_answers=[answer(401), answer(401), answer(204)])

    with pytest.raises(TokenRejected) as caught:
        send(make_client(static_settings(), fake))

    assert caught.value.status == 401
    assert fake.bearer_tokens() == [STATIC_TOKEN, STATIC_TOKEN]
    assert fake.token_requests == []
    assert STATIC_TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "token_answer",
    [
        answer(500),
        answer(200, token_type="Bearer", expires_in=3599),
    ],
    ids=["token-endpoint-500", "no-access-token"],
)
def test_given_the_token_endpoint_fails_then_token_unavailable_and_no_patch(
    token_answer: Callable[[httpx.Request], httpx.Response],
) -> None:
    fake = FakeCloudCockpit(token_answer=token_answer)

    with pytest.raises(TokenUnavailable):
        send(make_client(client_credentials_settings(), fake))

    assert fake.patches == []


def test_given_the_token_endpoint_unreachable_then_token_unavailable_and_no_patch() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake = FakeCloudCockpit(token_answer=unreachable)

    with pytest.raises(TokenUnavailable):
        send(make_client(client_credentials_settings(), fake))

    assert fake.patches == []


def test_given_a_401_and_then_no_token_from_the_endpoint_then_token_unavailable() -> None:
    answers = iter(
        [
            httpx.Response(200, json={"access_token": "tok-1", "expires_in": 3599}),
            httpx.Response(503),
        ]
    )
    fake = FakeCloudCockpit(patch_answers=[answer(401)], token_answer=lambda r: next(answers))

    with pytest.raises(TokenUnavailable):
        send(make_client(client_credentials_settings(), fake))

    assert len(fake.patches) == 1


# --- answers and transport failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, ApiRejected), (403, ApiRejected), (404, ApiRejected), (500, ApiUnavailable)],
)
def test_given_an_error_answer_then_the_client_raises_its_classification(
    status: int, expected: type[Exception]
) -> None:
    fake = FakeCloudCockpit(patch_answers=[answer(status, type="Err", description="Nope.")])

    with pytest.raises(expected) as caught:
        send(make_client(static_settings(), fake))

    assert getattr(caught.value, "status", None) == status
    assert len(fake.patches) == 1


def test_given_a_429_then_rate_limited_with_the_retry_after() -> None:
    fake = FakeCloudCockpit(
        patch_answers=[lambda r: httpx.Response(429, headers={"Retry-After": "7"})]
    )

    with pytest.raises(RateLimited) as caught:
        send(make_client(static_settings(), fake))

    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.PoolTimeout,
        httpx.RemoteProtocolError,
        httpx.ReadError,
    ],
)
def test_given_a_transport_error_then_api_unavailable_naming_neither_token_nor_url(
    error: type[httpx.TransportError],
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        # A message as revealing as possible: the client must not pass it on.
        raise error(
            f"{request.method} {request.url} {request.headers['authorization']}", request=request
        )

    fake = FakeCloudCockpit(patch_answers=[fail])

    with pytest.raises(ApiUnavailable) as caught:
        send(make_client(static_settings(), fake))

    text = f"{caught.value} {caught.value.error} {caught.value!r}"
    assert error.__name__ in text
    assert STATIC_TOKEN not in text
    assert BASE_URL not in text
    assert "cc.example.test" not in text
    assert str(CUSTOMER) not in text
    assert caught.value.status is None
    assert caught.value.__cause__ is None


def test_given_client_per_thread_then_each_thread_keeps_one_client_of_its_own() -> None:
    made: list[httpx.Client] = []

    def make() -> httpx.Client:
        made.append(httpx.Client())
        return made[-1]

    clients = ClientPerThread(make)
    seen: dict[str, list[httpx.Client]] = {"a": [], "b": []}

    def use(name: str) -> None:
        seen[name] += [clients.client(), clients.client()]

    threads = [threading.Thread(target=use, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["a"][0] is seen["a"][1]
    assert seen["b"][0] is seen["b"][1]
    assert seen["a"][0] is not seen["b"][0]
    assert len(made) == 2
    for client in made:
        client.close()
