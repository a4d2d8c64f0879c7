"""The test tiers: markers applied by tests/conftest.py, the fast loop of ``make test-fast``, and
pytest's cache (``--lf``) on."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import pytest_collection_modifyitems

REPO = Path(__file__).resolve().parents[2]
TIERS = {"unit", "integration", "slow", "disruptive"}


@dataclass
class FakeItem:
    """What the hook reads of a collected test: where it lives and the fixtures it uses."""

    path: Path
    fixturenames: list[str] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)

    def add_marker(self, marker: str) -> None:
        self.markers.add(marker)


def tiers_of(path: str, *fixtures: str) -> set[str]:
    item = FakeItem(REPO / path, list(fixtures))
    pytest_collection_modifyitems([item])  # type: ignore[list-item]
    return item.markers


def pytest_options() -> dict[str, object]:
    options: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))[
        "tool"
    ]["pytest"]["ini_options"]
    return options


def test_given_pyproject_then_it_declares_the_four_tiers_and_keeps_the_cache() -> None:
    options = pytest_options()
    declared = {str(line).split(":")[0] for line in options["markers"]}  # type: ignore[attr-defined]

    assert declared == TIERS
    assert "--strict-markers" in str(options["addopts"])
    assert "no:cacheprovider" not in str(options["addopts"]), "--lf needs pytest's cache"
    assert ".pytest_cache/" in (REPO / ".gitignore").read_text("utf-8").splitlines()


@pytest.mark.parametrize(
    ("path", "fixtures", "expected"),
    [
        ("tests/unit/test_events.py", (), {"unit"}),
        ("tests/unit/test_ledger.py", ("make_ledger",), {"integration"}),
        ("tests/unit/test_backoff.py", ("redis_url",), {"integration"}),
        ("tests/unit/test_apply.py", (), {"integration"}),
        ("tests/integration/test_dlq_commands.py", (), {"integration"}),
        ("tests/integration/test_chaos.py", (), {"integration", "slow", "disruptive"}),
        ("tests/integration/test_cluster.py", (), {"integration", "slow", "disruptive"}),
    ],
)
def test_given_a_test_then_its_tier_follows_where_it_lives_and_what_it_uses(
    path: str, fixtures: tuple[str, ...], expected: set[str]
) -> None:
    assert tiers_of(path, *fixtures) == expected


def test_given_make_test_fast_then_it_runs_lint_types_and_the_unit_tier_only() -> None:
    makefile = (REPO / "Makefile").read_text("utf-8")
    fast = re.search(r"^test-fast:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    full = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)

    assert fast and full
    assert "ruff check" in fast[1] and "mypy" in fast[1]
    assert "$(BIN)/pytest tests/unit -m unit" in fast[1]
    assert full[1].rstrip().endswith("$(BIN)/pytest"), "make test runs every tier"
