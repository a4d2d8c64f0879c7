"""The ingest app: ``POST /v1/events`` on FastAPI, and ``run_ingest`` serving it with uvicorn.

A request is answered in this order: 401 when its headers carry no credential that could pass
(before any of its body is read), 413 when its body is larger than ``CCSYNC_MAX_EVENT_BYTES``
(told by Content-Length or found while reading, never read past the limit), 408 when the body
does not arrive in time, 401 when its signature is not of its body, 415 in a form not accepted,
413 for a batch of over ``CCSYNC_MAX_BATCH_EVENTS`` events, 400 naming the invalid fields of its
events, 503 with ``Retry-After`` when the broker did not confirm them all, else 202. Errors,
404 and 405 included, are problem details (RFC 9457, ``application/problem+json``); nothing is
published from a request answered 4xx. A signed webhook whose ``webhook-id`` was published
already is answered as it was then, and publishes nothing (``replays``). Decoding runs on worker
threads, never on the event loop. ``?lane=backfill`` publishes the events to the backfill lane
(400 for a lane other than ``live`` or ``backfill``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from worker.constants import BACKFILL_ROUTING_KEY, EVENT_ROUTING_KEY
from worker.http_serving import serve
from worker.ingest.authentication import (
    Credentials,
    SignedRequest,
    Unauthenticated,
    authenticate,
    authenticate_headers,
)
from worker.ingest.decoding import (
    BatchTooLarge,
    FieldProblem,
    InvalidRequest,
    Outgoing,
    UnsupportedMediaType,
    decode_request,
)
from worker.ingest.publishing import BrokerUnavailable, EventPublisher
from worker.ingest.replays import ReplaysUnavailable, WebhookInFlight, WebhookReplays
from worker.observability.logs import configure_logging
from worker.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/v1/events"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
#: Seconds a producer is asked to wait (``Retry-After``) before retrying after a 503.
RETRY_AFTER_SECONDS: Final = 5
#: Seconds a request's body may take to arrive once its headers passed: a stalled upload is
#: answered 408 instead of holding its connection and buffer.
READ_TIMEOUT_SECONDS: Final = 30.0
#: Requests decoded at once on worker threads: bounds the memory and CPU that large bodies take
#: together (the others wait their turn, off the event loop).
CONCURRENT_DECODES: Final = 2
#: Sent with every answer (by the server, so its own 503 and 500 carry them too): ingest answers
#: programs with JSON; nothing of it is to be rendered, framed, sniffed or cached.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PayloadTooLarge(Exception):
    """Answer 413: the body is larger than the limit."""


class BodyTimedOut(Exception):
    """Answer 408: the body did not arrive within the read timeout."""


#: The lanes a request may name (``?lane=``), by the routing key its events are published with.
LANES: Final = {"live": EVENT_ROUTING_KEY, "backfill": BACKFILL_ROUTING_KEY}


def _lane(request: Request) -> str:
    """The routing key of the lane the request names (``?lane=live``, the default, or
    ``?lane=backfill`` for bulk traffic); ``InvalidRequest`` for any other."""
    lane = request.query_params.get("lane", "live")
    if lane not in LANES:
        raise InvalidRequest(
            [FieldProblem(event=None, field="lane", detail="must be 'live' or 'backfill'")]
        )
    return LANES[lane]


def create_app(
    settings: Settings,
    publisher: EventPublisher | None = None,
    *,
    read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
) -> FastAPI:
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
    decoding = asyncio.Semaphore(CONCURRENT_DECODES)

    def verified_messages(
        body: bytes, headers: Mapping[str, str]
    ) -> tuple[SignedRequest | None, list[Outgoing]]:
        signed = authenticate(credentials, headers, body, now=time.time())
        return signed, decode_request(
            body,
            headers,
            max_event_bytes=limit,
            max_batch_events=settings.max_batch_events,
        )

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
            authenticate_headers(credentials, request.headers, now=time.time())
            routing_key = _lane(request)
            body = await _read_body(request, limit, timeout_seconds=read_timeout_seconds)
            async with decoding:
                signed, messages = await run_in_threadpool(verified_messages, body, request.headers)

            async def publish() -> dict[str, Any]:
                await events_publisher.publish(messages, routing_key=routing_key)
                return {"accepted": len(messages), "eventIds": [m.event_id for m in messages]}

            answer = await (
                publish() if signed is None or replays is None else replays.once(signed, publish)
            )
        except (PayloadTooLarge, BatchTooLarge) as exc:
            return problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
        except BodyTimedOut as exc:
            return problem(HTTPStatus.REQUEST_TIMEOUT, str(exc))
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
            listed = (
                "" if exc.count == len(exc.problems) else f" (the first {len(exc.problems)} listed)"
            )
            return problem(
                HTTPStatus.BAD_REQUEST,
                f"{exc.count} invalid field(s){listed}: nothing was published",
                errorCount=exc.count,
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

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException) -> Response:
        # Starlette's own answers (404 for another path, 405 for another method) as problems.
        return problem(HTTPStatus(exc.status_code), str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_problem(request: Request, exc: Exception) -> Response:
        # A failure no answer above foresaw: still a problem document; Starlette then re-raises
        # it, so that the server logs its traceback.
        return problem(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "ingest failed unexpectedly (its log says why): whether the events were published "
            "is unknown, so retry the request later; repeats are absorbed as duplicates",
        )

    return app


async def _read_body(request: Request, limit: int, *, timeout_seconds: float) -> bytes:
    """The body; ``PayloadTooLarge`` as soon as it is known to exceed ``limit`` bytes,
    ``BodyTimedOut`` when it is not all there within ``timeout_seconds``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body is over {limit} bytes; at most {limit} are accepted"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimedOut(
            f"the body did not arrive within {timeout_seconds:g} s: send it whole, then wait"
        ) from None
    return b"".join(chunks)


def problem(
    status: HTTPStatus,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
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
    serve(app, host=host, port=port, headers=SECURITY_HEADERS)
