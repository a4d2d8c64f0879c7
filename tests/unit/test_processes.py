"""The parent of ``ccsync worker --processes N`` (``worker.runtime.processes``), over small Python
children that stand for workers: restarts and their limit, signals forwarded, the ready line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from worker.runtime.processes import (
    EXIT_TOO_MANY_RESTARTS,
    PARENT_PID_VARIABLE,
    Child,
    RestartPolicy,
    Supervisor,
    child_node_name,
)

READY = "child ready"
#: Restarts in quick succession, for the tests.
QUICK = RestartPolicy(first_delay_seconds=0.05, max_delay_seconds=0.2, max_restarts=3)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", f"import signal, sys, time\n{code}"]


#: A child that says it is ready, then sleeps until SIGTERM ends it with status 0.
WARM = python(
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    f"print({READY!r}, file=sys.stderr, flush=True)\n"
    "time.sleep(60)"
)


class Launches:
    """A ``Launch`` that counts the children it starts; ``argv`` for each, by slot."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.count = 0

    def __call__(self, child: Child) -> tuple[Sequence[str], Mapping[str, str]]:
        self.count += 1
        return self.argv, dict(os.environ)


def signal_self_after(seconds: float, *signums: signal.Signals) -> threading.Timer:
    def send() -> None:
        for signum in signums:
            os.kill(os.getpid(), signum)
            time.sleep(0.3)

    timer = threading.Timer(seconds, send)
    timer.start()
    return timer


def test_given_a_child_exiting_70_then_it_is_restarted_until_the_limit_and_the_parent_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    launches = Launches(python("sys.exit(70)"))
    supervisor = Supervisor(launches, count=1, policy=QUICK, ready_message=READY)

    with caplog.at_level(logging.INFO, logger="worker.runtime.processes"):
        status = supervisor.run()

    assert status == EXIT_TOO_MANY_RESTARTS
    assert launches.count == 1 + QUICK.max_restarts
    assert "a stage of its pipeline died" in caplog.text
    assert "starting it again in 0.05s" in caplog.text
    assert "starting it again in 0.1s" in caplog.text  # the delay doubles
    assert "stopping every worker process" in caplog.text


def test_given_a_child_killed_then_it_is_started_again_and_sigterm_stops_all_with_0(
    capfd: pytest.CaptureFixture[str],
) -> None:
    launches = Launches(WARM)
    supervisor = Supervisor(launches, count=2, policy=QUICK, ready_message=READY)

    def kill_one() -> None:
        while supervisor.children[0].process is None or not supervisor.children[0].ready.wait(5):
            time.sleep(0.05)
        supervisor.children[0].signal(signal.SIGKILL)
        while launches.count < 3 or not supervisor.children[0].ready.wait(5):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_one, daemon=True).start()
    started = time.monotonic()
    status = supervisor.run()

    assert status == 0
    assert launches.count == 3
    assert time.monotonic() - started < 20
    assert all(child.process is None for child in supervisor.children)
    # One ready line, once both children were ready; the children's own are not relayed.
    assert capfd.readouterr().err.count(READY) == 1


def test_given_a_second_signal_then_children_that_ignore_sigterm_are_killed() -> None:
    stubborn = python(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"print({READY!r}, file=sys.stderr, flush=True)\n"
        "time.sleep(60)"
    )
    supervisor = Supervisor(Launches(stubborn), count=2, policy=QUICK, ready_message=READY)
    timer = signal_self_after(1.5, signal.SIGINT, signal.SIGTERM)

    started = time.monotonic()
    status = supervisor.run()
    timer.join()

    assert status == 1  # the children ended by SIGKILL, not cleanly
    assert time.monotonic() - started < 10


def test_given_a_node_name_then_each_child_has_its_own() -> None:
    assert child_node_name(None, 1) == []
    assert child_node_name("sync@host-a", 1) == ["--hostname=sync.1@host-a"]
    assert child_node_name("sync", 0) == ["--hostname=sync.0"]


def test_given_the_parent_killed_then_its_child_gets_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    child = (
        "from worker.runtime.processes import stop_with_parent\n"
        "import os\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w'), os._exit(0)))\n"
        "stop_with_parent()\n"
        "time.sleep(30)"
    )
    parent = python(
        "import os, subprocess\n"
        f"env = {{**os.environ, {PARENT_PID_VARIABLE!r}: str(os.getpid())}}\n"
        f"subprocess.Popen({python(child)!r}, env=env)\n"
        "print('started', flush=True)\n"
        "time.sleep(30)"
    )
    process = subprocess.Popen(parent, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "started\n"
    time.sleep(1.0)  # the child reaches its prctl
    assert not marker.exists()

    process.kill()
    process.wait(timeout=10)
    process.stdout.close()

    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the orphaned child got no SIGTERM"


def test_given_children_paused_then_resumed_then_the_parents_metrics_show_no_pause(
    tmp_path: Path,
) -> None:
    """Gauges across processes: one series per label set (no pid), none left at 1 by a pause
    that ended, the largest value among the children alive."""
    child = (
        "from worker.observability import metrics\n"
        "metrics.set_paused('maintenance', 'alice')\n"
        "metrics.set_paused(None)\n"
        "metrics.OUTAGE_ACTIVE.set(float(sys.argv[1]))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for outage in ("0", "1"):
        subprocess.run([*python(child), outage], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name in ("ccsync_paused", "ccsync_outage_active")
    }

    assert samples[("ccsync_outage_active", ())] == 1
    assert samples[("ccsync_paused", (("by", ""), ("reason", "")))] == 0
    assert samples[("ccsync_paused", (("by", "alice"), ("reason", "maintenance")))] == 0
