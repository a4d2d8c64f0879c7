"""Issue 7: hostile input through the real consumer never crashes or stalls it.

Hundreds of messages drawn by hypothesis (random bytes, deep JSON, huge strings and numbers,
wrong types in every field, broken CloudEvents headers, hostile AMQP properties), plus a few
10 MB bodies, go to a real ``ccsync worker``. Each must end as a dead letter ``invalid-event``
with a reason, or, when a draw happened to be a valid event, be applied. The seed is printed;
``CCSYNC_HOSTILE_SEED=N`` replays a run.

The second part replays, one by one, the messages that once broke the worker, each against a
fresh worker so that one crash cannot hide another.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from tests.integration.conftest import worker_env
from tests.integration.events import native
from tests.integration.hostile_messages import (
    CASE_HEADER,
    HostileMessage,
    Published,
    RawLetter,
    RawPublisher,
    digest,
    drain_dead_letters,
    generate_cases,
    purge_all,
    settled_event_ids,
    ten_megabyte_messages,
    wait_for,
)
from tests.integration.producer import Producer
from tests.integration.waiting import wait_until
from worker.sandbox import SandboxControl, SandboxServer
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

GENERATED = 600
MINIMUM_CASES = 500
SETTLE_SECONDS = 70
DECIDE_SECONDS = 15
REASON = "x-ccsync-reason"
# Log lines that mean the consumer failed on a message instead of deciding what it is.
CRASH_SIGNS = {
    "intake callback raised": "intake failed; the message is requeued",
    "task raised": "no outcome could be recorded",
    "worker stopped": "Unrecoverable error",
}


def _env(broker_url: str, sandbox_url: str, redis_url: str) -> dict[str, str]:
    # One quick retry: a valid-by-chance event the API refuses ends fast instead of lingering in
    # the delay ladder after the test.
    return worker_env(
        broker_url,
        sandbox_url,
        redis_url,
        CCSYNC_LOG_FORMAT="json",
        CCSYNC_RETRY_DELAYS="0.1",
        CCSYNC_RETRY_JITTER="0",
    )


def _crashes(worker: LocalWorker) -> Counter[str]:
    log = worker.log
    found = Counter({name: log.count(sign) for name, sign in CRASH_SIGNS.items()})
    if not worker.alive:
        found["process exited"] += 1
    return +found


def _first_crash(worker: LocalWorker) -> str:
    """The first log line of each kind of crash."""
    lines = worker.log.splitlines()
    found = [
        next((line[:2500] for line in lines if sign in line), None) for sign in CRASH_SIGNS.values()
    ]
    return "\n".join(line for line in found if line) or "(no crash line in the log)"


def _apply_sentinel(producer: Producer, sandbox: SandboxControl, worker: LocalWorker) -> None:
    sentinel = native(identifier="STILL-RUNNING")
    producer.publish(json.dumps(sentinel).encode(), "application/json")
    wait_until(
        lambda: not worker.alive or any(c["id"] == sentinel["customerId"] for c in sandbox.state()),
        timeout=30,
        what="the valid event published after the hostile ones",
    )
    applied = {c["id"]: c["relationships"] for c in sandbox.state()}
    assert worker.alive, f"the worker died; first crash:\n{_first_crash(worker)}"
    assert applied[sentinel["customerId"]] == {"self": "STILL-RUNNING"}


def _problems(
    published: list[Published], letters: dict[int, RawLetter], settled: set[str]
) -> dict[str, list[str]]:
    """What went wrong, per kind of problem, one line per case."""
    problems: dict[str, list[str]] = defaultdict(list)
    for case in published:
        letter = letters.get(case.number)
        if letter is None:
            if not case.candidate_event_ids & settled:
                problems["neither dead-lettered nor applied"].append(case.description)
            continue
        reason = letter.headers.get("x-ccsync-reason")
        error = letter.headers.get("x-ccsync-error")
        where = f"#{case.number} {case.description}"
        if reason != "invalid-event":
            problems[f"dead-lettered as {reason!r}"].append(f"{where} -> {error!r}")
            continue
        if not isinstance(error, str) or not error.strip():
            problems["no x-ccsync-error"].append(where)
        if letter.body_digest != case.digest:
            problems["body changed"].append(where)
        if (letter.content_type or None) != case.content_type:
            problems["content type changed"].append(f"{where} -> {letter.content_type!r}")
        lost = case.header_keys - set(letter.headers)
        if lost:
            problems["application headers lost"].append(
                f"{where} -> lost {sorted(map(repr, lost))}"
            )
    return problems


def _report(problems: dict[str, list[str]]) -> str:
    lines = []
    for problem, cases in sorted(problems.items()):
        lines.append(f"{len(cases)} x {problem}:")
        lines.extend(f"    {case[:400]}" for case in cases[:12])
    return "\n".join(lines)


@pytest.mark.timeout(240)
def test_given_hundreds_of_hostile_messages_then_each_is_dead_lettered_and_the_worker_survives(
    broker_url: str,
    redis_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
    producer: Producer,
) -> None:
    # Given hostile messages drawn by hypothesis, and a few 10 MB bodies
    seed = int(os.environ.get("CCSYNC_HOSTILE_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nhostile input: seed {seed} (CCSYNC_HOSTILE_SEED={seed} replays this run)")
    messages = [*generate_cases(GENERATED, seed), *ten_megabyte_messages()]

    with LocalWorker(_env(broker_url, sandbox_server.url, redis_url), concurrency=8) as worker:
        # When a producer publishes all of them, each marked with its case number
        publisher = RawPublisher(broker_url)
        published: list[Published] = []
        refused: list[str] = []
        try:
            for number, message in enumerate(messages):
                why = publisher.publish(number, message)
                if why is None:
                    published.append(Published.of(number, message))
                else:
                    refused.append(f"#{number} {message.describe()} -> {why}")
        finally:
            publisher.close()
        del messages

        letters: dict[int, RawLetter] = {}
        strays: list[RawLetter] = []

        def settled_or_dead() -> bool:
            for letter in drain_dead_letters(broker_url):
                number = letter.headers.get(CASE_HEADER)
                if isinstance(number, int) and number not in letters:
                    letters[number] = letter
                else:
                    strays.append(letter)
            settled = settled_event_ids(worker.log)
            pending = [
                case
                for case in published
                if case.number not in letters and not case.candidate_event_ids & settled
            ]
            return not pending or not worker.alive

        started = time.monotonic()
        wait_for(settled_or_dead, timeout=SETTLE_SECONDS)
        settle_seconds = time.monotonic() - started

        # Then the worker is alive and applies a valid event published after them
        if worker.alive:
            _apply_sentinel(producer, sandbox, worker)
        crashes = _crashes(worker)
        settled = settled_event_ids(worker.log)
        alive = worker.alive
        first_crash = _first_crash(worker)

    purge_all(broker_url)
    cases = len(published)
    applied = sum(
        1 for case in published if case.number not in letters and case.candidate_event_ids & settled
    )
    reasons = Counter(str(letter.headers.get(REASON))[:30] for letter in letters.values())
    print(
        f"hostile input: {len(published) + len(refused)} generated, {cases} published, "
        f"{len(refused)} refused by the client or broker; dead letters by reason {dict(reasons)}; "
        f"{applied} happened to be valid and were applied; settled in {settle_seconds:.1f}s"
    )
    print(f"hostile input: {cases} cases, {sum(crashes.values())} crashes")

    # Then every message was decided: dead-lettered as invalid-event with a reason, or applied
    problems = _problems(published, letters, settled)
    assert cases >= MINIMUM_CASES, f"only {cases} published; refused:\n" + "\n".join(refused[:20])
    assert alive, f"the worker died; first crash:\n{first_crash}\n{_report(problems)}"
    assert not crashes, f"crashes {dict(crashes)}; first:\n{first_crash}\n{_report(problems)}"
    assert not problems, _report(problems)
    assert not strays, f"{len(strays)} dead letters without a case number: {strays[:3]}"


# --- messages that once broke the worker, each against a fresh worker ---------------------------


def _body(event: dict[str, Any], ensure_ascii: bool = True) -> bytes:
    return json.dumps(event, ensure_ascii=ensure_ascii).encode()


def _nested(levels: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(levels):
        table = {"n": table}
    return table


REPLAYED: dict[str, tuple[HostileMessage, set[str]]] = {
    # kombu decompresses bodies whose headers say "compression"; a producer's stray header of that
    # name made the decoding fail outside the intake's callback, and Celery stopped the worker.
    "a 'compression' header on a body that is not compressed": (
        HostileMessage(
            "compression header",
            _body(native()),
            headers={"compression": "application/x-gzip"},
        ),
        {"invalid-event", "applied"},
    ),
    # Producers built on kombu send content_encoding=utf-8; py-amqp then hands over a str body.
    "a valid event with content_encoding utf-8, as kombu producers send it": (
        HostileMessage("content_encoding utf-8", _body(native()), content_encoding="utf-8"),
        {"applied"},
    ),
    "an invalid event with content_encoding utf-8": (
        HostileMessage("content_encoding utf-8", b'{"eventId": 1}', content_encoding="utf-8"),
        {"invalid-event"},
    ),
    # py-amqp hands over an empty body as "" (str), not b"".
    "an empty body": (HostileMessage("empty", b""), {"invalid-event"}),
    # Python refuses integers of more than 4300 digits with ValueError, not JSONDecodeError.
    "an integer of 5000 digits": (
        HostileMessage("huge integer", b'{"eventId": "e-1", "n": ' + b"9" * 5000 + b"}"),
        {"invalid-event"},
    ),
    # A tenant becomes the X-Tenant header: one that cannot be a header value is not a tenant.
    "a tenant with a non-ASCII letter": (
        HostileMessage("tenant", _body(native(tenant="caf\u00e9.example"), False)),
        {"invalid-event"},
    ),
    "a tenant with a line break": (
        HostileMessage("tenant", _body(native(tenant="a.example\r\nX-Injected: 1"))),
        {"invalid-event"},
    ),
    "a tenant of 100000 characters": (
        HostileMessage("tenant", _body(native(tenant="t" * 100_000))),
        {"invalid-event"},
    ),
    # x-delivery-count is the broker's count of redeliveries; a producer's own is not one.
    "a valid event whose producer set x-delivery-count": (
        HostileMessage("x-delivery-count", _body(native()), headers={"x-delivery-count": 99}),
        {"applied"},
    ),
    # Header values are copied into the task message recursively.
    "a valid event with a header table nested 400 levels": (
        HostileMessage("nested header", _body(native()), headers={"x-deep": _nested(400)}),
        {"invalid-event", "applied"},
    ),
    "a valid event with a header key that is not UTF-8": (
        HostileMessage("bytes key", _body(native()), headers={b"\xff\xfe": 1}),
        {"applied"},
    ),
    "an invalid event with a header key that is not UTF-8": (
        HostileMessage("bytes key", b"not JSON", headers={b"\xff\xfe": 1}),
        {"invalid-event"},
    ),
}


@pytest.mark.parametrize("name", sorted(REPLAYED))
def test_given_a_message_that_once_broke_the_worker_then_it_is_decided_on_first_delivery(
    name: str,
    broker_url: str,
    redis_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxControl,
) -> None:
    message, expected = REPLAYED[name]
    candidates = Published.of(0, message).candidate_event_ids
    with LocalWorker(_env(broker_url, sandbox_server.url, redis_url), concurrency=2) as worker:
        # When a producer publishes it
        publisher = RawPublisher(broker_url)
        try:
            assert publisher.publish(0, message) is None
        finally:
            publisher.close()

        # Then it is dead-lettered as invalid-event or applied, once, and nothing crashed
        letters: list[RawLetter] = []

        def decided() -> bool:
            letters.extend(drain_dead_letters(broker_url))
            return bool(letters or candidates & settled_event_ids(worker.log)) or not worker.alive

        wait_for(decided, timeout=DECIDE_SECONDS, interval=0.2)
        time.sleep(0.5)  # a redelivery loop, if there is one, shows in the log by now
        letters.extend(drain_dead_letters(broker_url))
        crashes = _crashes(worker)
        alive = worker.alive
        first_crash = _first_crash(worker)
        outcomes = [str(letter.headers.get("x-ccsync-reason")) for letter in letters]
        if candidates & settled_event_ids(worker.log):
            outcomes.append("applied")
        about = [line[:500] for line in worker.log.splitlines() if '"eventId"' in line][-5:]
    purge_all(broker_url)

    assert alive, f"the worker died; first crash:\n{first_crash}"
    assert not crashes, f"crashes {dict(crashes)}; first:\n{first_crash}"
    assert len(outcomes) == 1 and outcomes[0] in expected, (
        f"outcomes within {DECIDE_SECONDS}s: {outcomes}, expected one of {sorted(expected)}; "
        f"errors {[letter.headers.get('x-ccsync-error') for letter in letters]}; "
        "the worker's last lines about events:\n" + "\n".join(about)
    )
    if outcomes == ["invalid-event"]:
        [letter] = letters
        assert letter.body_digest == digest(message.body)
        assert letter.headers.get("x-ccsync-error")
