"""The pages: overview (groups, chart, queue depths), the filtered list, one dead letter, jobs.

Reading pages read the dead-letter store, never the queue; handlers that wait on the store or the
broker are plain ``def``, so they run on worker threads and the event loop stays free.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from worker.amqp.queue_depths import read_queue_depths
from worker.console.broker import connected
from worker.console.chart import REASONS, build_counted_chart
from worker.console.editing import current_values
from worker.console.letters import detail, find, read_list
from worker.console.selection import parse_selection
from worker.console.sessions import Session
from worker.console.state import console_state, current_session
from worker.dead_letter_queue.edit import EDITABLE_FIELDS
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.render import describe

#: The last page the list serves (500 rows each: 50 million dead letters).
MAX_PAGE = 100_000

router = APIRouter()
LoggedIn = Annotated[Session, Depends(current_session)]


@router.get("/")
def overview(request: Request, session: LoggedIn) -> Response:
    """Groups and chart from aggregate queries of the store; queue depths from the broker.
    A plain ``def``: it runs on a worker thread, never on the event loop."""
    state = console_state(request)
    groups = state.store.stats(DeadLetterFilter())
    chart = build_counted_chart(state.store.counts_by_minute())
    with connected(state.config) as connection:
        depths = read_queue_depths(connection)
    return state.render(
        request,
        "overview.html",
        session=session,
        groups=groups,
        chart=chart,
        depths=depths,
        total=sum(group.count for group in groups),
    )


@router.get("/letters")
def letters(request: Request, session: LoggedIn) -> Response:
    state = console_state(request)
    selection = parse_selection(request.query_params.multi_items())
    listing = None
    if selection.problem is None:
        listing = read_list(state.store, selection.filters, page=_page(request))
    return state.render(
        request,
        "letters.html",
        session=session,
        selection=selection,
        listing=listing,
        reasons=REASONS,
        status_code=400 if selection.problem else 200,
    )


def _page(request: Request) -> int:
    """The list's ``page`` parameter: a number from 1, else the first page."""
    text = request.query_params.get("page", "")
    return int(text) if text.isdigit() and 0 < int(text) <= MAX_PAGE else 1


@router.get("/letters/{key}")
def letter(request: Request, key: str, session: LoggedIn) -> Response:
    state = console_state(request)
    found = find(state.store, key)
    if found is None:
        return state.render(request, "gone.html", session=session, status_code=404, key=key)
    lettered, entries = state.store.history(found)
    return state.render(
        request,
        "letter.html",
        session=session,
        letter=detail(found),
        state=found.state,
        history=describe(found, lettered, entries)["history"],
        event_id=found.record.event_id,
        fields=EDITABLE_FIELDS,
        values=current_values(found.record),
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
