"""The ingest app: ``POST /v1/events`` on FastAPI, and ``run_ingest`` serving it with uvicorn.

A request is answered in this order: 413 when its body is larger than ``CCSYNC_MAX_EVENT_BYTES``
(told by Content-Length or found while reading, never read past the limit), 401 without a valid
credential, 415 in a form not accepted, 400 naming every invalid field of every event, 503 with
``Retry-After`` when the broker did not confirm them all, else 202. A signed webhook whose
``webhook-id`` was published already is answered as it was then, and publishes nothing
(``replays``). Errors are problem details (RFC 9457, ``application/problem+json``); nothing is
published from a request answered 4xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from worker.ingest.authentication import Credentials, Unauthenticated, authenticate
from worker.ingest.decoding import InvalidRequest, UnsupportedMediaType, decode_request
from worker.ingest.publishing import BrokerUnavailable, EventPublisher
from worker.ingest.replays import ReplaysUnavailable, WebhookInFlight, WebhookReplays
from worker.observability.logs import configure_logging
from worker.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/v1/events"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
#: Seconds a producer is asked to wait (``Retry-After``) before retrying after a 503.
RETRY_AFTER_SECONDS: Final = 5


class PayloadTooLarge(Exception):
    """Answer 413: the body is larger than the limit."""


def create_app(settings: Settings, publisher: EventPublisher | None = None) -> FastAPI:
    """The ingest app for ``settings``; ``publisher`` defaults to one on ``settings.broker_url``.

    Raises ``ConfigurationError`` when neither ``CCSYNC_INGEST_TOKEN`` nor
    ``CCSYNC_INGEST_SECRET`` is set: such a server could accept no request.
    """
    settings.require_ingest_credentials()
    credentials = Credentials.from_settings(settings)
    limit = settings.max_event_bytes
    events_publisher = publisher or EventPublisher(settings)
    # Only signed requests carry a webhook-id: without a secret, no Redis is needed.
    replays = WebhookReplays(settings) if settings.ingest_secret is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await events_publisher.start()
        yield
        await events_publisher.close()
        if replays is not None:
            replays.close()

    # No generated documentation: the contract (section 6) documents the one endpoint.
    app = FastAPI(
        title="ccsync ingest", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.post(EVENTS_PATH)
    async def post_events(request: Request) -> Response:
        try:
            body = await _read_body(request, limit)
            signed = authenticate(credentials, request.headers, body, now=time.time())
            messages = decode_request(body, request.headers, max_event_bytes=limit)

            async def publish() -> dict[str, Any]:
                await events_publisher.publish(messages)
                return {"accepted": len(messages), "eventIds": [m.event_id for m in messages]}

            answer = await (
                publish() if signed is None or replays is None else replays.once(signed, publish)
            )
        except PayloadTooLarge as exc:
            return problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
        except Unauthenticated as exc:
            log.info("ingest: request refused: %s", exc)
            return problem(
                HTTPStatus.UNAUTHORIZED,
                str(exc),
                headers={"WWW-Authenticate": 'Bearer realm="ccsync ingest"'}
                if credentials.token is not None
                else None,
            )
        except UnsupportedMediaType as exc:
            return problem(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, str(exc))
        except InvalidRequest as exc:
            return problem(
                HTTPStatus.BAD_REQUEST,
                f"{len(exc.problems)} invalid field(s): nothing was published",
                errors=[
                    {"event": p.event, "field": p.field, "detail": p.detail}
                    if p.event is not None
                    else {"field": p.field, "detail": p.detail}
                    for p in exc.problems
                ],
            )
        except WebhookInFlight as exc:
            return problem(
                HTTPStatus.CONFLICT, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        except (BrokerUnavailable, ReplaysUnavailable) as exc:
            log.warning("ingest: answered 503: %s", exc)
            return problem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                str(exc),
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse(answer, status_code=HTTPStatus.ACCEPTED)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or ``PayloadTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
    return b"".join(chunks)


def problem(
    status: HTTPStatus,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """A problem details response (RFC 9457): the status's own title, ``detail`` and any
    extension members."""
    return JSONResponse(
        {"type": "about:blank", "title": status.phrase, "status": status.value, "detail": detail}
        | extensions,
        status_code=status.value,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def run_ingest(settings: Settings, *, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM. Raises ``ConfigurationError`` before listening when no
    credential is configured."""
    app = create_app(settings)
    configure_logging("INFO", settings)
    log.info("ccsync ingest: serving POST %s on http://%s:%d", EVENTS_PATH, host, port)
    # log_config=None: uvicorn's records go through ccsync's logging (JSON in production).
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
