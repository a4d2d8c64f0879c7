"""The pages: overview (groups, chart, queue depths), the filtered list, one dead letter, jobs.

Reading pages take nothing out of the queue (``worker.dead_letter_queue.reading.hold``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from worker.amqp.queue_depths import read_queue_depths
from worker.console.broker import connected
from worker.console.chart import REASONS, build_chart
from worker.console.editing import current_values
from worker.console.letters import detail, find, read_list, read_records
from worker.console.selection import parse_selection
from worker.console.sessions import Session
from worker.console.state import console_state, current_session
from worker.dead_letter_queue.edit import EDITABLE_FIELDS
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.stats import group_stats

router = APIRouter()
LoggedIn = Annotated[Session, Depends(current_session)]


@router.get("/")
def overview(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    with connected(state.config) as connection:
        records = read_records(connection, DeadLetterFilter())
        depths = read_queue_depths(connection)
    groups = group_stats(records)
    chart = build_chart((record.reason, record.dead_lettered_at) for record in records)
    return state.render(
        request,
        "overview.html",
        session=session,
        groups=groups,
        chart=chart,
        depths=depths,
        total=len(records),
    )


@router.get("/letters")
def letters(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    selection = parse_selection(request.query_params.multi_items())
    listing = None
    if selection.problem is None:
        with connected(state.config) as connection:
            listing = read_list(connection, selection.filters)
    return state.render(
        request,
        "letters.html",
        session=session,
        selection=selection,
        listing=listing,
        reasons=REASONS,
        status_code=400 if selection.problem else 200,
    )


@router.get("/letters/{key}")
def letter(request: Request, key: str, session: LoggedIn) -> Response:
    state = console_state(request)
    with connected(state.config) as connection:
        record = find(connection, key)
    if record is None:
        return state.render(request, "gone.html", session=session, status_code=404, key=key)
    return state.render(
        request,
        "letter.html",
        session=session,
        letter=detail(record),
        event_id=record.event_id,
        fields=EDITABLE_FIELDS,
        values=current_values(record),
    )


@router.get("/jobs")
def jobs(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    return state.render(request, "jobs.html", session=session, jobs=state.jobs.recent())


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str, session: LoggedIn) -> Response:
    state = console_state(request)
    found = state.jobs.get(job_id)
    if found is None:
        return state.render(request, "gone.html", session=session, status_code=404, key=job_id)
    return state.render(request, "job.html", session=session, job=found)


@router.get("/jobs/{job_id}/download")
def download(request: Request, job_id: str, session: LoggedIn) -> Response:
    state = console_state(request)
    found = state.jobs.get(job_id)
    if found is None or found.download is None or found.state != "done":
        return state.render(request, "gone.html", session=session, status_code=404, key=job_id)
    return FileResponse(
        found.download,
        media_type="application/x-ndjson",
        filename=f"dead-letters-{found.id}.jsonl",
    )
