"""``ccsync ingest``'s answers that need no broker: a stalled upload times out, and an unexpected
failure is still a problem document. The app is called in process, as uvicorn would call it."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from worker.ingest import create_app
from worker.ingest.publishing import EventPublisher
from worker.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_environment")

TOKEN = secrets.token_urlsafe(32)
BEARER = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
#: Short, so that the test is quick; the server's own is much longer.
READ_TIMEOUT_SECONDS = 0.3


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://ingest")


def _app() -> FastAPI:
    settings = Settings.model_validate({"CCSYNC_INGEST_TOKEN": TOKEN})
    # Never started: these requests are answered before anything is published.
    return create_app(
        settings,
        publisher=EventPublisher(settings),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
    )


async def _stalled_upload() -> AsyncIterator[bytes]:
    yield b'{"eventId":'
    await asyncio.sleep(3600)


def test_given_an_upload_that_stalls_then_408_once_the_read_timeout_passes() -> None:
    async def main() -> tuple[httpx.Response, float]:
        async with _client(_app()) as client:
            started = time.monotonic()
            answer = await client.post("/v1/events", content=_stalled_upload(), headers=BEARER)
            return answer, time.monotonic() - started

    answer, elapsed = asyncio.run(main())

    assert answer.status_code == 408, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert str(READ_TIMEOUT_SECONDS) in answer.json()["detail"]
    assert elapsed < 30 * READ_TIMEOUT_SECONDS


def test_given_a_failure_nothing_foresaw_then_500_is_a_problem_document_too() -> None:
    app = _app()

    @app.get("/failing")
    async def failing() -> None:
        raise RuntimeError("a failure nothing foresaw")

    async def main() -> httpx.Response:
        async with _client(app) as client:
            return await client.get("/failing")

    answer = asyncio.run(main())

    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert "retry" in answer.json()["detail"]
    assert "nothing foresaw" not in answer.text  # the log says why, the producer is not told
