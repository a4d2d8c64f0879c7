"""What every request of the console shares: configuration, sessions, jobs, templates, and the
checks each request goes through (a session; a CSRF token for anything that changes state)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from worker.console.config import ConsoleConfig
from worker.console.jobs import JobRunner
from worker.console.keeping import ConsoleKeeper
from worker.console.login_limit import LoginLimiter
from worker.console.sessions import SESSION_COOKIE, Session, Sessions, cookie_name
from worker.dead_letter_queue.store import DeadLetterStore
from worker.observability.redaction import Redaction

#: The header JavaScript sends the CSRF token in; forms send the field ``csrf_token``.
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"


class NotLoggedIn(Exception):
    """No live session: a page answers with the login page, the API with 401."""


class CsrfRefused(Exception):
    """A state-changing request without its session's CSRF token: 403."""


def _moment(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _printed(redaction: Redaction) -> Any:
    """Jinja's ``finalize``: every expression a template prints goes through the redaction.

    Markup stays Markup (its own escaping already happened; the masks hold no markup).
    """

    def finalize(value: Any) -> Any:
        if isinstance(value, Markup):
            return Markup(redaction.text(str(value)))
        return redaction.text(value) if isinstance(value, str) else value

    return finalize


def _templates(redaction: Redaction) -> Environment:
    # autoescape on for every template: producers' bodies and headers are hostile text.
    # finalize: every printed value passes the redaction, so no secret reaches a page.
    environment = Environment(
        loader=PackageLoader("worker.console", "templates"),
        autoescape=True,
        finalize=_printed(redaction),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["moment"] = _moment
    environment.filters["epoch"] = lambda seconds: _moment(datetime.fromtimestamp(seconds, UTC))
    return environment


@dataclass
class ConsoleState:
    config: ConsoleConfig
    sessions: Sessions
    limiter: LoginLimiter
    jobs: JobRunner
    redaction: Redaction
    templates: Environment
    jobs_dir: Path
    #: Where every page reads dead letters (shared by the request threads: an engine's pool).
    store: DeadLetterStore
    keeper: ConsoleKeeper
    _tmp: Any = field(default=None, repr=False)

    @classmethod
    def create(cls, config: ConsoleConfig, jobs_dir: Path | None = None) -> ConsoleState:
        # The settings hold the console token too (``config.token`` is read from them).
        redaction = Redaction.from_settings(config.settings)
        tmp = None
        if jobs_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ccsync-console-")
            jobs_dir = Path(tmp.name)
        return cls(
            config=config,
            sessions=Sessions(config.session_seconds, idle=config.session_idle_seconds),
            limiter=LoginLimiter(),
            jobs=JobRunner(),
            redaction=redaction,
            templates=_templates(redaction),
            jobs_dir=jobs_dir,
            store=(store := DeadLetterStore(config.settings.dlq_store_url)),
            keeper=ConsoleKeeper(config, store),
            _tmp=tmp,
        )

    def close(self) -> None:
        self.keeper.stop()
        self.jobs.shutdown()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def render(
        self,
        request: Request,
        template: str,
        *,
        session: Session | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            request_path=request.url.path,
            session=session,
            csrf_token=session.csrf_token if session is not None else None,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    def json(self, data: Any, status_code: int = 200) -> JSONResponse:
        return JSONResponse(self.redaction.tree(data), status_code=status_code)


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def served_over_tls(request: Request) -> bool:
    """True when the operator's browser speaks https to the console (directly, or to a trusted
    proxy that says so in X-Forwarded-Proto)."""
    return request.url.scheme == "https"


def console_cookie(request: Request, name: str) -> str:
    """The name of the console's cookie ``name`` on this request: ``__Host-`` over TLS."""
    return cookie_name(name, secure=served_over_tls(request))


def current_session(request: Request) -> Session:
    """The request's live session, or ``NotLoggedIn``. The API's requests are the page's own
    polls: they leave the session's idle time running."""
    session = console_state(request).sessions.get(
        request.cookies.get(console_cookie(request, SESSION_COOKIE)),
        touch=not request.url.path.startswith("/api/"),
    )
    if session is None:
        raise NotLoggedIn
    return session


async def checked_session(request: Request) -> Session:
    """For state-changing requests: the live session, and its CSRF token in the request."""
    session = current_session(request)
    offered = request.headers.get(CSRF_HEADER)
    if offered is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        field_value = form.get(CSRF_FIELD)
        offered = field_value if isinstance(field_value, str) else None
    if not session.csrf_matches(offered):
        raise CsrfRefused
    return session
