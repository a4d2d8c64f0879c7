"""An interrupted replay loses nothing: ``ccsync dlq replay`` killed halfway through 2,000.

No worker runs here, so every replayed event waits in ccsync.events where it can be counted:
each eventId must be in the dead-letter queue, in ccsync.events, or in both (a duplicate is
acceptable: publish confirmed, ack not yet sent). None may be in neither.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.integration.test_dlq_support import (
    dead_letters,
    depth,
    fresh_queues,
    put_dead_letters,
    seed_for_event,
    take_all,
    wait_for,
)
from worker.constants import DEAD_LETTER_QUEUE, EVENTS_QUEUE


@pytest.mark.parametrize(
    ("how", "total", "rate", "kill_after"),
    [(signal.SIGKILL, 2000, 1000, 800), (signal.SIGINT, 600, 300, 200)],
    ids=["sigkill", "ctrl-c"],
)
def test_an_interrupted_replay_loses_nothing(
    broker_url: str, how: signal.Signals, total: int, rate: int, kill_after: int
) -> None:
    # Given dead letters, none of them in ccsync.events
    fresh_queues(broker_url)
    seeds = [seed_for_event("retries-exhausted", status=503) for _ in range(total)]
    put_dead_letters(broker_url, seeds)
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
            lambda: replay.poll() is not None or depth(broker_url, EVENTS_QUEUE) >= kill_after,
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
    # Then, once the broker has taken back what the replay held, every event is somewhere
    wait_for(
        lambda: depth(broker_url, DEAD_LETTER_QUEUE) + depth(broker_url, EVENTS_QUEUE) >= total,
        timeout=30,
        what="the held dead letters to return",
    )
    time.sleep(0.2)  # a confirmed publish may still be on its way into the queue count
    dead = [record.event_id for record in dead_letters(broker_url)]
    replayed = [event.event_id for event in take_all(broker_url, EVENTS_QUEUE)]
    assert len(dead) + len(replayed) >= total
    assert set(dead) | set(replayed) == expected
    # And the interruption did come halfway: both queues hold part of the events
    assert kill_after <= len(replayed) < total
    assert 0 < len(dead) <= total - kill_after
    # And no event is in either queue twice; the only duplicates are across the two
    assert max(Counter(dead).values()) == 1 and max(Counter(replayed).values()) == 1
    duplicates = len(dead) + len(replayed) - total
    assert duplicates <= 256  # at most the replay's window of unacknowledged confirms
    print(f"{how.name}: dead {len(dead)} + replayed {len(replayed)} = {total} + {duplicates}")
