"""The console in a real headless Chromium (Playwright), against a real ``ccsync console``
process, the broker, a running ``ccsync worker`` and the sandbox: an operator logs in, fixes and
replays one event, replays a group, purges one. Screenshots of the main pages go to
``$CCSYNC_SCREENSHOTS_DIR``, by default a folder under the system's temporary directory;
those of docs/ come from ``CCSYNC_SCREENSHOTS_DIR=docs/screenshots``, so a plain test run leaves the
checkout as it was.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.console_support import CONSOLE_TOKEN, console_process
from tests.integration.test_dlq_support import (
    fresh_queues,
    put_dead_letters,
    seed_for_event,
    stored,
    this_tests_store,
    wait_for,
    waiting,
)
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.stored_replay import purge_stored
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("CCSYNC_SCREENSHOTS_DIR")
    or Path(tempfile.gettempdir()) / "ccsync-console-screenshots"
)
#: A laptop's screen.
VIEWPORT = {"width": 1366, "height": 820}
NOW = datetime.now(UTC).replace(microsecond=0)

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: tools/test-prerequisites installs it")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def console(broker_url: str, tmp_path: Path) -> Iterator[str]:
    """``ccsync console`` as an operator starts it; yields its URL."""
    with console_process(broker_url, tmp_path / "console.log") as (url, _):
        yield url


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    context = browser.new_context(base_url=console, viewport=VIEWPORT)
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{page.url.split('/login')[0]}/login")
    page.get_by_label("Your name").fill("alice")
    page.get_by_label("Token").fill(CONSOLE_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Groups", exact=True)).to_be_visible()


def identifier(sandbox: SandboxControl, customer: str) -> str | None:
    for view in sandbox.state():
        if view["id"] == customer:
            return view["relationships"].get("self")
    return None


def finish_job(page: Page, message: str) -> None:
    expect(page.locator('[data-job="state"]')).to_have_text("done", timeout=30_000)
    expect(page.locator('[data-job="message"]')).to_contain_text(message)


def test_an_operator_fixes_replays_and_purges_in_the_browser(
    broker_url: str, sandbox: SandboxControl, worker: LocalWorker, page: Page
) -> None:
    # Given dead letters of three kinds, over the last hours: two the API rejected (a bad
    # internal identifier), three whose retries ran out in an outage, two invalid events
    fresh_queues(broker_url)
    rejected = [
        seed_for_event(
            "api-rejected",
            status=400,
            error="HTTP 400; ValidationError; The request is invalid.; "
            "internalIdentifier: must not contain spaces",
            identifier="BAD ID",
            at=NOW - timedelta(hours=5 - i),
        )
        for i in range(2)
    ]
    exhausted = [
        seed_for_event("retries-exhausted", status=503, at=NOW - timedelta(hours=3, minutes=i * 7))
        for i in range(3)
    ]
    invalid = [
        seed_for_event(
            "invalid-event", error="occurredAt: Field required", at=NOW - timedelta(hours=i)
        )
        for i in range(2)
    ]
    put_dead_letters(broker_url, [*rejected, *exhausted, *invalid])
    # (moved from the queue into the store by the console's own keeper)
    wait_for(lambda: waiting() == 7, what="the console's keeper to store 7 dead letters")
    fixed, kept = rejected

    # When the operator logs in: the overview shows the groups, the chart and the queues (the
    # dead-letter queue empty: the keeper took them in)
    log_in(page)
    groups = page.locator("table.groups tbody tr")
    expect(groups).to_have_count(3)
    expect(page.locator("h1 .big")).to_have_text("7")
    expect(page.locator("svg.chart rect.bar").first).to_be_visible()
    expect(page.locator('dd[data-depth="deadLetters"]')).to_have_text("0")
    shoot(page, "overview")

    # And opens the api-rejected group, then the first of its dead letters
    page.get_by_role("link", name="api-rejected").click()
    expect(page.locator("table.letters tbody tr")).to_have_count(2)
    shoot(page, "dead-letters")
    page.get_by_role("link", name=str(fixed.event_id)).click()
    expect(page.get_by_role("cell", name="must not contain spaces", exact=True)).to_be_visible()
    shoot(page, "dead-letter")

    # And corrects its internal identifier: first a value the event model refuses
    page.get_by_label("internalIdentifier").fill("x" * 300)
    page.get_by_role("button", name="Preview the change").click()
    expect(page.locator("#edit-problem")).to_contain_text("not valid")
    expect(page.get_by_role("button", name="Replay the edited event")).to_have_count(0)
    page.go_back()
    # Then a good one: the change is shown as a diff, then replayed
    page.get_by_label("internalIdentifier").fill("FIXED-42")
    page.get_by_role("button", name="Preview the change").click()
    expect(page.locator("#diff .add")).to_contain_text(['"internalIdentifier": "FIXED-42"'])
    expect(page.locator("#diff .del")).to_contain_text(['"internalIdentifier": "BAD ID"'])
    shoot(page, "edit-diff")
    page.get_by_role("button", name="Replay the edited event").click()
    finish_job(page, "edited internalIdentifier and replayed 1 of 1")

    # Then the running worker applies it at the sandbox, and it is gone from the list
    customer = fixed.record().customer_id
    assert customer is not None
    wait_for(lambda: identifier(sandbox, customer) == "FIXED-42", what="the fix applied")
    page.goto("/letters?reason=api-rejected")
    expect(page.locator("table.letters tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name=str(kept.event_id))).to_be_visible()
    expect(page.get_by_role("link", name=str(fixed.event_id))).to_have_count(0)

    # When the operator replays the retries-exhausted group as a whole
    page.goto("/")
    page.get_by_role("link", name="retries-exhausted").click()
    page.get_by_role("button", name="Replay…").click()
    # Then the preview says how many and which
    expect(page.get_by_role("heading", name="Replay 3 dead letters?")).to_be_visible()
    for seed in exhausted:
        expect(page.get_by_text(str(seed.event_id))).to_be_visible()
    shoot(page, "replay-preview")
    page.get_by_role("button", name="Replay 3").click()
    finish_job(page, "replayed 3 of 3")
    shoot(page, "job")
    # And the worker applies all three
    for seed in exhausted:
        owner = seed.record().customer_id
        assert owner is not None
        wait_for(lambda c=owner: identifier(sandbox, c) == "ID-1", what=f"{owner} applied")

    # When the operator purges the invalid events, typing the confirmation
    page.goto("/letters?reason=invalid-event")
    page.get_by_role("button", name="Purge…").click()
    purge_button = page.get_by_role("button", name="Purge 2")
    page.get_by_label("to confirm").fill("purge 2")
    shoot(page, "purge-confirm")
    purge_button.click()
    finish_job(page, "purged 2 dead letter(s)")

    # Then only the one rejected event the operator left alone is still dead-lettered
    assert [record.event_id for record in stored()] == [kept.event_id]
    page.goto("/")
    expect(page.locator("h1 .big")).to_have_text("1")


def test_a_dead_letter_replayed_elsewhere_is_reported_gone(broker_url: str, page: Page) -> None:
    # Given one dead letter, opened by the operator
    fresh_queues(broker_url)
    put_dead_letters(
        broker_url, [seed_for_event("api-rejected", status=404, customer=str(uuid.uuid4()))]
    )
    wait_for(lambda: waiting() == 1, what="the console's keeper")
    log_in(page)
    page.get_by_role("link", name="api-rejected").click()
    page.locator("table.letters tbody a").first.click()
    # When someone else purged it meanwhile
    with this_tests_store() as store:
        purge_stored(store, DeadLetterFilter(), who="bob")
    page.get_by_label("internalIdentifier").fill("NEW")
    page.get_by_role("button", name="Preview the change").click()
    # Then the console says so instead of failing
    expect(page.get_by_role("heading", name="Not there")).to_be_visible()
