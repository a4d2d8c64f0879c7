"""The console's FastAPI application: routes, static files, and the answers every request shares
(security headers; 400 for a Host it does not answer to; the login page or 401 without a session;
403 without a CSRF token; one line of 503 when the broker or the dead-letter store cannot be
reached). The keeper runs beside it (``worker.console.keeping``). Forwarded headers
count from the trusted proxies of the settings only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from amqp.exceptions import AMQPError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from kombu.exceptions import KombuError
from starlette.middleware.trustedhost import TrustedHostMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from worker.console import routes_actions, routes_api, routes_auth, routes_pages
from worker.console.config import ConsoleConfig
from worker.console.state import ConsoleState, CsrfRefused, NotLoggedIn, console_state
from worker.dead_letter_queue.store import StoreUnavailable
from worker.exceptions import CcsyncError

#: Sent with every answer: no script or style from anywhere but the console's own files (and no
#: inline script at all), no framing, no referrer leaving the console.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: Failures of the world outside the console a page may meet: shown as one line, status 503.
OUTSIDE_FAILURES: Final[tuple[type[Exception], ...]] = (
    CcsyncError,
    OSError,
    KombuError,
    AMQPError,
    StoreUnavailable,
)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(config: ConsoleConfig, *, jobs_dir: Path | None = None) -> FastAPI:
    """The console for ``config``; export files go to ``jobs_dir`` (a temporary one if None)."""
    state = ConsoleState.create(config, jobs_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.keeper.start()
        yield
        state.close()

    app = FastAPI(
        title="ccsync console", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.console = state
    app.mount("/static", StaticFiles(packages=[("worker.console", "static")]), name="static")
    for module in (routes_auth, routes_pages, routes_actions, routes_api):
        app.include_router(module.router)
    settings = config.settings
    # Inside the security headers: a refused Host gets them too.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.console_allowed_hosts))

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    if settings.console_trusted_proxies:
        # Outermost: the client's address and scheme are the proxy's word before anything reads
        # them, and only the configured proxies' word (uvicorn's own trust is off).
        app.add_middleware(
            ProxyHeadersMiddleware, trusted_hosts=list(settings.console_trusted_proxies)
        )

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: CsrfRefused) -> Response:
        return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)

    for failure in OUTSIDE_FAILURES:

        @app.exception_handler(failure)
        async def outside_failure(request: Request, exc: Exception) -> Response:
            console = console_state(request)
            text = console.redaction.text(" ".join(str(exc).split()) or type(exc).__name__)
            if _wants_json(request):
                return console.json({"error": text}, status_code=503)
            return console.render(
                request, "problem.html", session=None, status_code=503, problem=text
            )

    return app
