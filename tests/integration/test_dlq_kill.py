"""An interrupted replay loses nothing: ``ccsync dlq replay`` killed halfway through 2,000.

No worker runs here, so every replayed event waits in ccsync.events where it can be counted:
each eventId must be waiting in the store, in ccsync.events, or in both (a duplicate is
acceptable after SIGKILL: publish confirmed, not yet marked replayed; its claim goes back to
waiting after ``CLAIM_TIMEOUT_SECONDS``). None may be in neither. An operator's Ctrl-C is not a
kill: the replay stops at once, settles what it holds and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_dlq_support import (
    fresh_queues,
    replayed_depth,
    seed_for_event,
    store_dead_letters,
    stored,
    take_replayed,
    this_tests_store,
    wait_for,
)
from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.store import CLAIM_TIMEOUT_SECONDS, REPLAYED
from worker.dead_letter_queue.stored_replay import purge_stored

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.mark.parametrize(
    ("how", "total", "rate", "kill_after"),
    [(signal.SIGKILL, 2000, 1000, 800)],
    ids=["sigkill"],
)
def test_an_interrupted_replay_loses_nothing(
    broker_url: str, how: signal.Signals, total: int, rate: int, kill_after: int
) -> None:
    # Given dead letters, none of them in ccsync.events
    fresh_queues(broker_url)
    seeds = [seed_for_event("retries-exhausted", status=503) for _ in range(total)]
    store_dead_letters(broker_url, seeds)
    expected = {str(seed.event_id) for seed in seeds}
    # When a replay of all of them runs in its own process
    replay = subprocess.Popen(
        [sys.executable, "-m", "worker", "dlq", "replay", "--yes", f"--rate={rate}"],
        env={**os.environ, "CCSYNC_BROKER_URL": broker_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # And is interrupted once a good part of them was published
        wait_for(
            lambda: replay.poll() is not None or replayed_depth(broker_url) >= kill_after,
            timeout=30,
            what=f"{kill_after} replayed events",
        )
        assert replay.poll() is None, "the replay finished before it could be interrupted"
        replay.send_signal(how)
        replay.wait(timeout=30)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    assert replay.returncode != 0
    # Then, once the claims of the killed replay have timed out (the keeper's round, a claim
    # timeout later), every event is somewhere
    time.sleep(0.2)  # a confirmed publish may still be on its way into the queue count
    with this_tests_store() as store:
        later = datetime.now(UTC) + timedelta(seconds=CLAIM_TIMEOUT_SECONDS + 1)
        store.expire(retention=timedelta(days=14), now=later)
        marked = [
            letter.record.event_id
            for letter in store.matching(DeadLetterFilter(), states=(REPLAYED,))
        ]
    dead = [record.event_id for record in stored()]
    replayed = [event.event_id for event in take_replayed(broker_url)]
    assert len(dead) + len(replayed) >= total
    assert set(dead) | set(replayed) == expected
    # And only what was published is marked replayed
    assert set(marked) <= set(replayed)
    # And the interruption did come halfway: part replayed, part still waiting
    assert kill_after <= len(replayed) < total
    assert 0 < len(dead) < total
    # And no event is in either place twice; the only duplicates are across the two
    assert max(Counter(dead).values()) == 1 and max(Counter(replayed).values()) == 1
    duplicates = len(dead) + len(replayed) - total
    assert duplicates <= 256  # at most the replay's window of unacknowledged confirms
    print(f"{how.name}: dead {len(dead)} + replayed {len(replayed)} = {total} + {duplicates}")


#: Seconds an operator's Ctrl-C may take to stop a replay, settling included.
CTRL_C_STOPS_WITHIN = 3.0
#: Interrupted replays at full speed, where SIGINT lands in the middle of socket reads and writes.
CTRL_C_ROUNDS = 4


@pytest.mark.parametrize("rate", [None, 300], ids=["full-speed", "rate-300"])
def test_ctrl_c_stops_a_replay_at_once_and_settles_what_it_holds(
    broker_url: str, rate: int | None
) -> None:
    total, interrupt_after = 1500, 200
    for _ in range(CTRL_C_ROUNDS):
        # Given dead letters, none of them in ccsync.events (the last round's purged)
        fresh_queues(broker_url)
        with this_tests_store() as store:
            purge_stored(store, DeadLetterFilter(), who="tests")
        seeds = [seed_for_event("retries-exhausted", status=503) for _ in range(total)]
        store_dead_letters(broker_url, seeds)
        # When a replay of all of them runs in its own process
        # And the operator presses Ctrl-C once a good part of them was published
        returncode, said, took = _interrupted_replay(broker_url, rate, after=interrupt_after)
        # Then it stops at once
        assert took < CTRL_C_STOPS_WITHIN, f"Ctrl-C took {took:.1f}s to stop the replay"
        # And says so, exiting as an interrupted command does
        assert returncode == 128 + signal.SIGINT, (returncode, said)
        assert "interrupted: replayed" in said
        # And every event is in exactly one place: what was confirmed is marked replayed
        dead = [record.event_id for record in stored()]
        replayed = [event.event_id for event in take_replayed(broker_url)]
        assert sorted(dead + replayed) == sorted(str(seed.event_id) for seed in seeds)
        assert interrupt_after <= len(replayed) < total


def _interrupted_replay(broker_url: str, rate: int | None, *, after: int) -> tuple[int, str, float]:
    """``ccsync dlq replay`` sent SIGINT once ``after`` events are in ccsync.events.

    Returns its exit status, what it wrote, and the seconds it took to exit after the signal.
    """
    replay = subprocess.Popen(
        [sys.executable, "-m", "worker", "dlq", "replay", "--yes"]
        + ([] if rate is None else [f"--rate={rate}"]),
        env={**os.environ, "CCSYNC_BROKER_URL": broker_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: replay.poll() is not None or replayed_depth(broker_url) >= after,
            timeout=30,
            what=f"{after} replayed events",
        )
        assert replay.poll() is None, "the replay finished before it could be interrupted"
        replay.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        said, _ = replay.communicate(timeout=30)
        return replay.returncode, said, time.monotonic() - interrupted
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.communicate()
