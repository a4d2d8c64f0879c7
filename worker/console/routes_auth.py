"""Logging in and out. The login form carries a CSRF token of its own (a cookie and a field that
must match), the token is compared in constant time, and failures are rate-limited per address.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from worker.console.audit import audit
from worker.console.sessions import SESSION_COOKIE, TOKEN_BYTES, Session, token_matches
from worker.console.state import (
    checked_session,
    client_address,
    console_state,
)

#: The cookie holding the login form's CSRF token (there is no session yet to hold it).
LOGIN_COOKIE: Final = "ccsync_console_login"
#: Seconds the login form stays usable.
LOGIN_FORM_SECONDS: Final = 1800

router = APIRouter()


def _secure(request: Request) -> bool:
    # Behind a TLS-terminating proxy, uvicorn's proxy headers make the scheme https here.
    return request.url.scheme == "https"


def _login_page(
    request: Request, *, status_code: int = 200, problem: str | None = None
) -> Response:
    state = console_state(request)
    form_token = secrets.token_urlsafe(TOKEN_BYTES)
    response = state.render(
        request,
        "login.html",
        session=None,
        status_code=status_code,
        login_token=form_token,
        problem=problem,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        form_token,
        max_age=LOGIN_FORM_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    operator: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    state = console_state(request)
    address = client_address(request)
    expected = request.cookies.get(LOGIN_COOKIE)
    if not expected or not csrf_token or not token_matches(csrf_token, expected):
        return _login_page(request, status_code=403, problem="The form expired; try again.")
    wait = state.limiter.retry_after(address)
    if wait > 0:
        audit(operator=operator or "-", address=address, action="login", result="rate-limited")
        response = _login_page(
            request, status_code=429, problem=f"Too many attempts; try again in {wait:.0f} s."
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if not token_matches(token, state.config.token):
        state.limiter.failed(address)
        audit(operator=operator or "-", address=address, action="login", result="refused")
        return _login_page(request, status_code=401, problem="That token is not the console's.")
    state.limiter.succeeded(address)
    session = state.sessions.open(operator)
    audit(operator=session.operator, address=address, action="login", result="ok")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=int(state.sessions.lifetime),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, session: Annotated[Session, Depends(checked_session)]) -> Response:
    state = console_state(request)
    state.sessions.close(session.id)
    audit(operator=session.operator, address=client_address(request), action="logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
