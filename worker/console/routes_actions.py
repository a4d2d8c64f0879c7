"""The actions: preview what an action would touch, then run it as a background job.

Every POST here passes ``checked_session`` (a live session and its CSRF token, else 403). A bulk
action is previewed first (how many and which) and then runs with the previewed count as its
limit, as ``ccsync dlq`` asks before it acts; a purge needs the typed confirmation
``purge N``. An edit is validated by the event model before anything is published.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from worker.console.actions import edit_replay_work, export_work, purge_work, replay_work
from worker.console.editing import EditPreview, changed_fields, preview_edit
from worker.console.jobs import Work
from worker.console.letters import find, read_list
from worker.console.selection import SelectionQuery, parse_selection
from worker.console.sessions import Session
from worker.console.state import checked_session, client_address, console_state
from worker.dead_letter_queue.edit import EDITABLE_FIELDS
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.dead_letter_queue.store import WAITING

#: The bulk actions and the verb each preview shows.
ACTIONS: Final = {"replay": "Replay", "purge": "Purge", "export": "Export"}

router = APIRouter()
Checked = Annotated[Session, Depends(checked_session)]


async def _form(request: Request) -> list[tuple[str, str]]:
    form = await request.form()
    return [(key, value) for key, value in form.multi_items() if isinstance(value, str)]


async def _edit_form(request: Request, key: str) -> tuple[dict[str, str], DeadLetterRecord | None]:
    """The edit form posted for dead letter ``key``, and the letter (None: not in the store, or
    no longer waiting). The store is read on a worker thread, off the event loop."""
    form = dict(await _form(request))
    found = await run_in_threadpool(find, console_state(request).store, key)
    return form, None if found is None or found.state != WAITING else found.record


def _chosen(items: list[tuple[str, str]]) -> SelectionQuery:
    """The selection of a bulk form: its filters, narrowed to the ticked rows if any."""
    selected = [value for key, value in items if key == "selected" and value]
    if selected:
        items = [(k, v) for k, v in items if k != "event_id"] + [("event_id", v) for v in selected]
    return parse_selection(items)


def _action(items: list[tuple[str, str]]) -> str | None:
    action = dict(items).get("action", "")
    return action if action in ACTIONS else None


@router.post("/actions/preview")
async def preview(request: Request, session: Checked) -> Response:
    state = console_state(request)
    items = await _form(request)
    action, selection = _action(items), _chosen(items)
    if action is None or selection.problem is not None:
        problem = selection.problem or "unknown action"
        return state.render(
            request, "problem.html", session=session, status_code=400, problem=problem
        )
    listing = await run_in_threadpool(read_list, state.store, selection.filters)
    return state.render(
        request,
        "preview.html",
        session=session,
        action=action,
        verb=ACTIONS[action],
        selection=selection,
        listing=listing,
    )


@router.post("/actions/run")
async def run(request: Request, session: Checked) -> Response:
    state = console_state(request)
    items = await _form(request)
    fields = dict(items)
    action, selection = _action(items), parse_selection(items)
    try:
        limit = int(fields.get("limit", ""))
    except ValueError:
        limit = -1
    problem = selection.problem
    if action is None or limit < 1:
        problem = problem or "preview the action first"
    elif action == "purge" and fields.get("confirm", "").strip() != f"purge {limit}":
        problem = f"type 'purge {limit}' to confirm the purge"
    if problem is not None:
        return state.render(
            request, "problem.html", session=session, status_code=400, problem=problem
        )
    assert action is not None
    work: Work
    if action == "replay":
        work = replay_work(state.config, state.store, selection.filters, limit)
    elif action == "purge":
        work = purge_work(state.store, selection.filters, limit)
    else:
        path = state.jobs_dir / f"export-{secrets.token_hex(8)}.jsonl"
        work = export_work(state.config, state.store, selection.filters, limit, path)
    job = state.jobs.submit(
        kind=action,
        selection=f"{selection.describe()} (at most {limit})",
        operator=session.operator,
        address=client_address(request),
        work=work,
    )
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/letters/{key}/edit")
async def edit(request: Request, key: str, session: Checked) -> Response:
    """The edit's diff and validation; nothing is published yet."""
    state = console_state(request)
    form, record = await _edit_form(request, key)
    if record is None:
        return state.render(request, "gone.html", session=session, status_code=404, key=key)
    if record.event_id is None:
        result = EditPreview({}, record.body, [], "it has no eventId: only a group can take it")
    else:
        result = preview_edit(record, changed_fields(record, form))
    return state.render(
        request,
        "edit_preview.html",
        session=session,
        status_code=200 if result.acceptable else 400,
        key=key,
        event_id=record.event_id,
        result=result,
        form={name: form.get(name, "") for name in EDITABLE_FIELDS},
    )


@router.post("/letters/{key}/replay")
async def edit_and_replay(request: Request, key: str, session: Checked) -> Response:
    """Validates the edit again (the form may be forged or stale), then replays it as a job."""
    state = console_state(request)
    form, record = await _edit_form(request, key)
    if record is None or record.event_id is None:
        return state.render(request, "gone.html", session=session, status_code=404, key=key)
    result = preview_edit(record, changed_fields(record, form))
    if not result.acceptable:
        return state.render(
            request,
            "problem.html",
            session=session,
            status_code=400,
            problem=result.problem or "nothing to replay",
        )
    job = state.jobs.submit(
        kind="edit-replay",
        selection=DeadLetterFilter.build(event_ids=[record.event_id]).describe()
        + " "
        + " ".join(f"--set {name}" for name in sorted(result.edits)),
        operator=session.operator,
        address=client_address(request),
        work=edit_replay_work(state.config, state.store, record.event_id, result.edits),
    )
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)
