"""The JSON the pages poll: queue depths, dead-letter groups, a job's progress.

Without a session every answer is 401. Every string passes the redaction first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from worker.amqp.queue_depths import read_queue_depths
from worker.console.broker import connected
from worker.console.sessions import Session
from worker.console.state import console_state, current_session
from worker.dead_letter_queue.filters import DeadLetterFilter

router = APIRouter(prefix="/api")
LoggedIn = Annotated[Session, Depends(current_session)]


@router.get("/depths")
def depths(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    with connected(state.config) as connection:
        found = read_queue_depths(connection)
    return state.json(found.to_json())


@router.get("/stats")
def stats(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    groups = state.store.stats(DeadLetterFilter())
    return state.json({"groups": [group.to_json() for group in groups]})


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str, session: LoggedIn) -> Response:
    state = console_state(request)
    found = state.jobs.get(job_id)
    if found is None:
        return state.json({"error": "no such job"}, status_code=404)
    return state.json(found.to_json())
