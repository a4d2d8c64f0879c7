"""Node tools of ops/ (the AsyncAPI parser, the PromQL grammar), installed on first use.

Each tool is an npm package folder with a committed package-lock.json; ``npm ci`` installs exactly
that when its node_modules is missing. A missing node or npm fails the test, it never skips it:
the checks these tools make have no stand-in.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASYNCAPI_CHECK = REPO / "ops" / "asyncapi-check"
PROMQL_CHECK = REPO / "ops" / "promql-check"
NPM_CI_TIMEOUT = 300


def node_tool(folder: Path) -> Path:
    """The folder, with its dependencies installed; fails the test when node or npm is missing."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            pytest.fail(
                f"{program} is not on PATH: install Node.js 18 or later (apt-get install npm)"
            )
    # Test runs in parallel on one work tree must not run two `npm ci` in one folder at once.
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ccsync-npm-ci-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "node_modules" / ".package-lock.json").exists():
            result = subprocess.run(
                ["npm", "ci", "--silent", "--no-audit", "--no-fund"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
            if result.returncode != 0:
                pytest.fail(f"npm ci in {folder} failed:\n{result.stdout}\n{result.stderr}")
    return folder


def run_node(
    folder: Path, script: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(node_tool(folder) / script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
