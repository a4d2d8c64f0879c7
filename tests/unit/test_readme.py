"""The README a newcomer reads: short, and every command in it works.

Each command of its ``sh`` blocks is checked here the cheapest way that still runs something
real: ``ccsync`` commands are run (``health``, which needs every service, is parsed by the CLI
here and run by tests/integration/test_health.py); make targets are dry-run with ``make -n``;
pytest's options are run on one small module; compose commands are checked against the compose
file (no Docker engine here: tests/unit/test_ops_compose.py and test_ops_manifests.py parse it).
``make demo`` is its own run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.unit.test_ops_manifests import accepted_by_cli
from worker.cli import main
from worker.constants import EVENT_TYPE

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: The README's length a newcomer reads in one go; the rest lives in docs/.
MAX_LINES = 250

pytestmark = pytest.mark.usefixtures("clean_environment")


def readme_commands() -> list[str]:
    """Every command line of the README's ``sh`` blocks, without its trailing comment."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text("utf-8"), re.DOTALL)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [" ".join(line.split()) for line in lines if line]


def make_dry_run(target: str) -> None:
    result = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def pytest_on_one_module(*options: str) -> Callable[[Path], None]:
    def run(tmp_path: Path) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *options,
                "-q",
                "-o",
                f"cache_dir={tmp_path}",
                "tests/unit/test_backoff.py",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-2000:]
        assert " passed" in result.stdout

    return run


def compose(check: Callable[[dict[str, object]], bool]) -> Callable[[Path], None]:
    def run(tmp_path: Path) -> None:
        document = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
        assert check(document)

    return run


def ccsync_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "CCSYNC_BROKER_URL=amqp://***@localhost:5672//  # default" in result.output


def ccsync_health(tmp_path: Path) -> None:
    assert accepted_by_cli(["ccsync", "health"]).info_name == "health"
    assert '"health"' in (REPO / "tests" / "integration" / "test_health.py").read_text("utf-8")


def ccsync_validate(tmp_path: Path) -> None:
    event = {
        "eventId": "e-1",
        "eventType": EVENT_TYPE,
        "occurredAt": "2026-01-01T00:00:00Z",
        "customerId": str(uuid.uuid4()),
        "internalIdentifier": "ERP-1",
    }
    (tmp_path / "events.jsonl").write_text(json.dumps(event) + "\n", "utf-8")
    result = CliRunner().invoke(main, ["validate", "events.jsonl"])  # the test's own directory
    assert result.exit_code == 0, result.output


def _services(document: dict[str, object]) -> dict[str, dict[str, object]]:
    services = document["services"]
    assert isinstance(services, dict)
    return services


#: Each README command and how it is run or checked.
CHECKS: dict[str, Callable[[Path], None]] = {
    "make demo": lambda _: make_dry_run("demo"),
    "make test": lambda _: make_dry_run("test"),
    "make test-fast": lambda _: make_dry_run("test-fast"),
    ".venv/bin/pytest -m unit": pytest_on_one_module("-m", "unit"),
    ".venv/bin/pytest --lf": pytest_on_one_module("--lf"),
    "docker compose up --build": compose(
        lambda d: {"rabbitmq", "redis", "sandbox", "worker"} <= set(_services(d))
    ),
    "docker compose --profile monitoring up": compose(
        lambda d: all(
            _services(d)[name].get("profiles") == ["monitoring"]
            for name in ("prometheus", "grafana")
        )
    ),
    "CLOUDCOCKPIT_ENV_FILE=/path/to/cloudcockpit.env docker compose up --build": compose(
        lambda d: "CLOUDCOCKPIT_ENV_FILE" in str(_services(d)["worker"]["env_file"])
    ),
    ".venv/bin/ccsync config": ccsync_config,
    ".venv/bin/ccsync health": ccsync_health,
    ".venv/bin/ccsync validate events.jsonl": ccsync_validate,
}


def test_given_the_readme_then_a_newcomer_reads_it_in_one_go() -> None:
    lines = README.read_text("utf-8").splitlines()

    assert len(lines) < MAX_LINES, f"{len(lines)} lines: move detail into docs/"


def test_given_the_readme_then_every_command_in_it_is_checked_here() -> None:
    assert set(readme_commands()) == set(CHECKS)


@pytest.mark.parametrize("command", sorted(CHECKS))
def test_given_a_readme_command_then_it_runs(command: str, tmp_path: Path) -> None:
    CHECKS[command](tmp_path)


def test_given_the_readme_then_every_page_it_links_exists() -> None:
    links = re.findall(r"\]\(([^)#]+)", README.read_text("utf-8"))

    missing = [link for link in links if not (REPO / link).exists()]

    assert links and not missing
