"""Logging in and out. The login form carries a CSRF token of its own (a cookie and a field that
must match), is small and read with small limits before anything else, the token is compared in
constant time, and attempts are rate-limited (``worker.console.login_limit``).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from worker.console.audit import audit
from worker.console.sessions import (
    SESSION_COOKIE,
    TOKEN_BYTES,
    Session,
    operator_name,
    token_matches,
)
from worker.console.state import (
    checked_session,
    client_address,
    console_cookie,
    console_state,
    served_over_tls,
)

#: The cookie holding the login form's CSRF token (there is no session yet to hold it).
LOGIN_COOKIE: Final = "ccsync_console_login"
#: Seconds the login form stays usable.
LOGIN_FORM_SECONDS: Final = 1800
#: Bytes a login request's body may have: the form's four short fields, with room to spare. A
#: longer one (or one without a Content-Length) is refused before any of it is read.
MAX_LOGIN_BODY_BYTES: Final = 8192
#: Fields a login form may have: csrf_token, operator, token, everywhere.
MAX_LOGIN_FIELDS: Final = 4
#: Bytes one field of the login form may have.
MAX_LOGIN_FIELD_BYTES: Final = 2048
#: The field asking to end the operator's other sessions ("log out everywhere").
EVERYWHERE_FIELD: Final = "everywhere"

router = APIRouter()


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
        console_cookie(request, LOGIN_COOKIE),
        form_token,
        max_age=LOGIN_FORM_SECONDS,
        httponly=True,
        samesite="strict",
        secure=served_over_tls(request),
    )
    return response


async def _login_form(request: Request) -> FormData | Response:
    """The login form, read within its limits; or the answer refusing it."""
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        return PlainTextResponse("a login needs a Content-Length\n", status_code=411)
    if int(length) > MAX_LOGIN_BODY_BYTES:
        return PlainTextResponse(
            f"a login form has {MAX_LOGIN_BODY_BYTES} bytes at most\n", status_code=413
        )
    try:
        return await request.form(
            max_files=0, max_fields=MAX_LOGIN_FIELDS, max_part_size=MAX_LOGIN_FIELD_BYTES
        )
    except HTTPException:  # Starlette's answer to a form over its limits
        return _login_page(request, status_code=400, problem="That was not the login form.")


def _text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _login_form(request)
    if isinstance(form, Response):
        return form
    state = console_state(request)
    address = client_address(request)
    operator = operator_name(_text(form, "operator"))
    expected = request.cookies.get(console_cookie(request, LOGIN_COOKIE))
    offered = _text(form, "csrf_token")
    if not expected or not offered or not token_matches(offered, expected):
        return _login_page(request, status_code=403, problem="The form expired; try again.")
    attempt = state.limiter.reserve(address)
    if not attempt.allowed:
        if attempt.first_refusal:
            audit(operator=operator, address=address, action="login", result="rate-limited")
        wait = attempt.retry_after
        response = _login_page(
            request, status_code=429, problem=f"Too many attempts; try again in {wait:.0f} s."
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if not token_matches(_text(form, "token"), state.config.token):
        audit(operator=operator, address=address, action="login", result="refused")
        return _login_page(request, status_code=401, problem="That token is not the console's.")
    state.limiter.succeeded(address, attempt)
    if _text(form, EVERYWHERE_FIELD):
        ended = state.sessions.close_operator(operator)
        audit(operator=operator, address=address, action="logout-everywhere", sessions=ended)
    session = state.sessions.open(operator)
    audit(operator=session.operator, address=address, action="login", result="ok")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        console_cookie(request, SESSION_COOKIE),
        session.id,
        max_age=int(state.sessions.lifetime),
        httponly=True,
        samesite="strict",
        secure=served_over_tls(request),
    )
    _forget_cookie(request, response, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(
    request: Request, session: Annotated[Session, Depends(checked_session)]
) -> Response:
    state = console_state(request)
    address = client_address(request)
    form = await request.form()  # read already by checked_session: no second read
    if _text(form, EVERYWHERE_FIELD):
        ended = state.sessions.close_operator(session.operator)
        audit(
            operator=session.operator, address=address, action="logout-everywhere", sessions=ended
        )
    else:
        state.sessions.close(session.id)
        audit(operator=session.operator, address=address, action="logout")
    response = RedirectResponse("/login", status_code=303)
    _forget_cookie(request, response, SESSION_COOKIE)
    return response


def _forget_cookie(request: Request, response: Response, name: str) -> None:
    # A __Host- cookie is only replaced (here: deleted) by a Secure one.
    secure = served_over_tls(request)
    response.delete_cookie(console_cookie(request, name), secure=secure, httponly=True)
