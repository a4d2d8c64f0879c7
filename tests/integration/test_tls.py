"""Issue 7: amqps:// verifies the broker's certificate; a custom CA is how private ones pass."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT
from tests.integration.tls_proxy import TlsProxy, make_certificates
from tests.unit.test_async_calls import ANSWER, read_request, server
from worker.amqp.connection import broker_connection
from worker.cloudcockpit.client import lane_connections, make_http_client
from worker.settings import Settings


def _settings(url: str, ca: Path | None) -> Settings:
    values: dict[str, object] = {"CCSYNC_BROKER_URL": url}
    if ca is not None:
        values["CCSYNC_BROKER_CA_FILE"] = str(ca)
    return Settings.model_validate(values)


def _declare_something(connection: Connection) -> None:
    connection.ensure_connection(max_retries=1)
    channel = connection.channel()
    channel.queue_declare("ccsync-tls-check", auto_delete=True)
    channel.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> tuple[str, Path]:
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    proxy = TlsProxy(cert, key, (RABBITMQ_HOST, RABBITMQ_PORT)).__enter__()
    vhost = urlsplit(broker_url).path
    return f"amqps://guest:guest@localhost:{proxy.port}{vhost}", ca


def test_given_amqps_and_the_brokers_ca_then_the_connection_is_verified_and_works(
    tls_broker: tuple[str, Path],
) -> None:
    url, ca = tls_broker
    with broker_connection(_settings(url, ca)) as connection:
        _declare_something(connection)


def test_given_amqps_without_the_ca_then_the_unknown_certificate_is_refused(
    tls_broker: tuple[str, Path],
) -> None:
    url, _ = tls_broker
    with (
        pytest.raises(OperationalError) as refused,
        broker_connection(_settings(url, None)) as conn,
    ):
        _declare_something(conn)
    assert "unable to get local issuer certificate" in str(refused.value)


def test_given_a_host_name_the_certificate_does_not_name_then_it_is_refused(
    tls_broker: tuple[str, Path],
) -> None:
    url, ca = tls_broker
    wrong_host = url.replace("@localhost:", "@127.0.0.1:")
    with (
        pytest.raises(OperationalError) as refused,
        broker_connection(_settings(wrong_host, ca)) as conn,
    ):
        _declare_something(conn)
    assert "IP address mismatch" in str(refused.value)


@pytest.fixture(scope="module")
def https_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server answering 204 to everything, with a certificate of the test CA."""
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("api-tls"))

    class NoContent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoContent)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://localhost:{server.server_port}", ca
    server.shutdown()
    server.server_close()


def test_given_cloudcockpit_ca_file_then_the_api_client_trusts_that_ca(
    https_api: tuple[str, Path],
) -> None:
    url, ca = https_api
    settings = Settings.model_validate({"CLOUDCOCKPIT_CA_FILE": str(ca)})
    with make_http_client(settings) as client:
        assert client.get(url).status_code == 204


def test_given_no_ca_file_then_the_api_client_refuses_an_unknown_certificate(
    https_api: tuple[str, Path],
) -> None:
    url, _ = https_api
    with make_http_client(Settings()) as client, pytest.raises(httpx.ConnectError) as refused:
        client.get(url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


# --- the lanes' connections (event loop) --------------------------------------------------------


@pytest.fixture(scope="module")
def api_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """The test CA, and a server context with a certificate for ``localhost`` it signed."""
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("lane-tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ca, context


def _lane_calls(
    server_tls: ssl.SSLContext,
    settings: Settings,
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    calls: int,
) -> list[int]:
    """The statuses of ``calls`` PATCHes, one after another, through one connection of a lane
    (``lane_connections``) to an HTTPS server that ``handle`` serves."""

    async def main() -> list[int]:
        async with (
            server(handle, tls=server_tls) as url,
            lane_connections(settings)() as connection,
        ):
            statuses = []
            for _ in range(calls):
                statuses.append((await connection.patch(f"{url}/x", body={})).status_code)
                await asyncio.sleep(0.05)  # what the server does after answering, done
            return statuses

    return asyncio.run(main())


@pytest.fixture
def no_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_proxy_in_the_environment")
def test_given_no_ca_file_then_a_lane_refuses_an_unknown_certificate(
    api_tls: tuple[Path, ssl.SSLContext],
) -> None:
    _, server_tls = api_tls

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # never comes: the client refuses the handshake
        writer.write(ANSWER)

    with pytest.raises(httpx.ConnectError) as refused:
        _lane_calls(server_tls, Settings.model_validate({}), handle, calls=1)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


@pytest.mark.usefixtures("no_proxy_in_the_environment")
def test_given_the_ca_file_then_a_lane_keeps_one_verified_connection_for_its_calls(
    api_tls: tuple[Path, ssl.SSLContext],
) -> None:
    ca, server_tls = api_tls
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(ANSWER)

    settings = Settings.model_validate({"CLOUDCOCKPIT_CA_FILE": str(ca)})
    assert _lane_calls(server_tls, settings, handle, calls=5) == [204] * 5
    assert connections == 1


@pytest.mark.usefixtures("no_proxy_in_the_environment")
def test_given_the_server_closed_a_lanes_connection_then_the_next_call_takes_a_new_one(
    api_tls: tuple[Path, ssl.SSLContext],
) -> None:
    ca, server_tls = api_tls
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()  # keep-alive refused after the answer
        await writer.wait_closed()

    settings = Settings.model_validate({"CLOUDCOCKPIT_CA_FILE": str(ca)})
    assert _lane_calls(server_tls, settings, handle, calls=3) == [204] * 3
    assert connections == 3
