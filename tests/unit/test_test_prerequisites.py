"""``make test`` installs what the tests run besides Python, RabbitMQ and Redis, or says the one
command that does: a test run never depends on ``.ci/run`` having prepared the machine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "test-prerequisites"
#: Programs the tests run (promtool, the browser tests' Chromium, the ops/ checkers' Node.js,
#: the export test's C compiler, the dead-letter store's createdb) and the Debian package of each.
PROGRAMS = {
    "promtool": "prometheus",
    "chromium": "chromium",
    "node": "nodejs",
    "npm": "npm",
    "createdb": "postgresql",
}


def run_with_path(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shutil.which("bash")), str(SCRIPT)],
        env={"PATH": str(directory)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def bin_with(tmp_path: Path, *programs: str) -> Path:
    """A PATH holding ``id`` and ``programs`` (stand-ins that do nothing), and no apt-get."""
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "id").symlink_to(str(shutil.which("id")))
    for program in programs:
        (directory / program).write_text("#!/bin/sh\n", "utf-8")
        (directory / program).chmod(0o755)
    return directory


def test_given_make_test_then_it_runs_the_prerequisites_first() -> None:
    makefile = (REPO / "Makefile").read_text("utf-8")

    (test_rule,) = re.findall(r"^test: (.*)$", makefile, re.MULTILINE)

    assert "test-prerequisites" in test_rule.split()
    assert re.search(r"^test-prerequisites:\n\ttools/test-prerequisites$", makefile, re.MULTILINE)


def test_given_the_script_then_it_names_every_program_the_tests_run() -> None:
    script = SCRIPT.read_text("utf-8")
    listed = re.search(r'NEEDED="([^"]+)"', script)

    assert listed, "tools/test-prerequisites lists no program"
    needed = dict(pair.split(":") for pair in listed[1].split())

    assert PROGRAMS.items() <= needed.items()
    assert needed["cc"] == "gcc"


def test_given_programs_missing_and_no_apt_then_it_prints_the_one_command_and_fails(
    tmp_path: Path,
) -> None:
    result = run_with_path(bin_with(tmp_path, "node", "npm", "cc", "createdb"))

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "  sudo apt-get install -y --no-install-recommends prometheus chromium"
    )


def test_given_every_program_then_it_does_nothing(tmp_path: Path) -> None:
    result = run_with_path(
        bin_with(tmp_path, "promtool", "chromium", "node", "npm", "cc", "createdb")
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
