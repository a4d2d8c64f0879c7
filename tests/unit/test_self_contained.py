"""The repository stands alone: no tracked file refers to a path outside it.

Users get the repository and nothing beside it, so a test, doc or script that reads a sibling
folder (``../shared``, ``parent / "shared"``) or an absolute path of one machine (``/work/…``)
works only where it was written.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]

# Literal mentions of places outside the repository.
OUTSIDE = re.compile(
    r"""
      (?<![\w.])/work/[\w.-]              # an absolute path of the machine it was written on
    | \bshared/(?:contract\.md|cloudcockpit-api|field-notes)  # the team's briefing, by its files
    | \.parent\s*/\s*["']shared["']       # Path(...).parent / "shared"
    | ["']\.\./shared\b                   # "../shared…" as a string
    """,
    re.VERBOSE,
)
# A relative path: dot-dot segments followed by a name, as in ../x, ../../x/y.
RELATIVE = re.compile(r"(?<![\w./])((?:\.\./)+)([\w.-]+)")
# Not ours to police: npm's lock files. And this file, whose examples below are such references.
SKIPPED = (
    "ops/asyncapi-check/package-lock.json",
    "ops/promql-check/package-lock.json",
    "tests/unit/test_self_contained.py",
)


def tracked_text_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [name for name in listing.decode("utf-8").split("\0") if name and name not in SKIPPED]


def read_text(name: str) -> str | None:
    path = REPO / name
    if not path.is_file():  # deleted in the work tree, not yet committed
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def climbs_out(name: str, dots: str) -> bool:
    """Whether ``dots`` (``../`` repeated), read from file ``name``, leaves the repository."""
    depth = len(PurePosixPath(name).parts) - 1  # folders between the repository root and the file
    return dots.count("../") > depth


def references_outside(name: str, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if OUTSIDE.search(line):
            found.append(f"{name}:{number}: {line.strip()}")
            continue
        for match in RELATIVE.finditer(line):
            if climbs_out(name, match[1]):
                found.append(f"{name}:{number}: {line.strip()}")
                break
    return found


def test_given_the_tracked_files_then_none_refers_to_a_path_outside_the_repository() -> None:
    files = tracked_text_files()
    assert "README.md" in files, "git ls-files did not list the repository"

    found = [
        reference
        for name in files
        if (text := read_text(name)) is not None
        for reference in references_outside(name, text)
    ]

    assert not found, "references outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("README.md", "The product contract is `../shared/contract.md`."),
        ("tests/conftest.py", 'SHARED = Path(__file__).resolve().parents[1].parent / "shared"'),
        ("tests/unit/test_x.py", 'SPEC = REPO.parent / "shared" / "cloudcockpit-api" / "x.yaml"'),
        ("tests/unit/test_x.py", 'AUTH = Path("../../../shared/auth.md")'),
        ("docs/x.md", "See [the briefing](../../notes.md)."),
        ("Makefile", "\tcp /work/shared/contract.md docs/"),
    ],
)
def test_given_a_reference_outside_then_it_is_reported_with_file_and_line(
    name: str, line: str
) -> None:
    assert references_outside(name, f"first line\n{line}\n") == [f"{name}:2: {line.strip()}"]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        (
            "docs/contract.md",
            "CloudCockpit's side is in [cloudcockpit-api.md](cloudcockpit-api.md).",
        ),
        (
            "docs/cloudcockpit-api.md",
            "[`worker/sandbox/openapi.yaml`](../worker/sandbox/openapi.yaml)",
        ),
        ("tests/unit/test_x.py", 'ROOT = Path(__file__).resolve().parents[2] / "docs"'),
        ("README.md", "The chaos run (shared with other tests) uses /tmp/ccsync only."),
        ("ops/README.md", "mounts ./ops/rabbitmq into the container"),
    ],
)
def test_given_a_reference_inside_then_it_is_not_reported(name: str, line: str) -> None:
    assert references_outside(name, line) == []
