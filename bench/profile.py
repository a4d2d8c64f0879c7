"""Where a worker spends its CPU: py-spy sampling during a run, summarised by function.

Optional: used when ``py-spy`` is installed (``pip install py-spy``) and ``--profile`` is given.
By default only samples of the thread holding the GIL are kept: on a CPU-bound Python process
that is where its CPU goes (C code that releases the GIL, like socket and TLS calls, is missed).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_profile(
    pid: int, output: Path, *, rate: int = 100, mode: str = "gil"
) -> Callable[[], None]:
    """Starts ``py-spy record`` on ``pid``; the returned function stops it and waits.

    ``mode``: "gil" samples only threads holding the GIL (CPU spent in Python), "idle" every
    thread whatever it does (wall time: where threads wait), "active" py-spy's default.
    """
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    process = subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",
            "--output",
            str(output),
            "--duration",
            "600",
            *({"gil": ["--gil"], "idle": ["--idle"]}.get(mode, [])),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )

    def finish() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            _, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate(timeout=10)
        if not output.exists():
            print(f"py-spy wrote no profile: {errors.strip()[-500:]}", file=sys.stderr)

    return finish


def _frame_name(frame: str) -> str:
    """``function (module/path.py:123)`` -> ``function (module/path.py)``."""
    return _LINE_NUMBER.sub(")", frame.strip())


def _function(frame: str) -> str:
    return frame.partition(" (")[0]


def _role(frames: list[str]) -> str:
    names = [_function(frame) for frame in frames]
    if "_worker" in names:
        return "pool threads"
    if "Consumer.start" in names:
        return "main thread (Celery event loop and the intake)"
    return "other threads"


def summarise(path: Path, title: str, top: int = 8) -> str:
    """Shares of the samples by thread, the commonest stack ends, and ccsync's own functions."""
    roles: Counter[str] = Counter()
    ends: dict[str, Counter[str]] = {}
    within: dict[str, Counter[str]] = {}
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")[1:] if frame]
        if not frames:
            continue
        total += count
        role = _role(frames)
        roles[role] += count
        end = " < ".join(_function(frame) for frame in reversed(frames[-3:]))
        ends.setdefault(role, Counter())[end] += count
        for name in {_function(frame) for frame in frames}:
            within.setdefault(role, Counter())[name] += count
        own[frames[-1]] += count
        for name in {frame for frame in frames if frame.split("(", 1)[-1].startswith("worker/")}:
            ours[name] += count
    if not total:
        return "no samples"

    def share(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"py-spy, {title}: {total} samples", "", "by thread:"]
    lines += [f"  {share(n)}  {name}" for name, n in roles.most_common()]
    for role, in_role in roles.most_common(2):
        lines += ["", f"{role}, commonest stack ends (leaf < caller < caller), % of its samples:"]
        lines += [f"  {100 * n / in_role:5.1f}%  {end}" for end, n in ends[role].most_common(top)]
        # Inclusive, leaving out the frames nearly every sample has (thread start, event loop).
        telling = [(name, n) for name, n in within[role].most_common() if n < 0.9 * in_role]
        lines += ["", f"{role}, inclusive (function and its callees), % of its samples:"]
        lines += [f"  {100 * n / in_role:5.1f}%  {name}" for name, n in telling[: 3 * top]]
    lines += ["", "self, top functions:"]
    lines += [f"  {share(n)}  {name}" for name, n in own.most_common(top)]
    lines += ["", "ccsync's own functions, inclusive:"]
    lines += [f"  {share(n)}  {name}" for name, n in ours.most_common(top + 4)]
    return "\n".join(lines)
