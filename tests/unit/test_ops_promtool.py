"""The alert rules checked and unit-tested by Prometheus's own ``promtool`` (Debian's
``prometheus`` package; ``make test`` installs it: tools/test-prerequisites). Missing promtool
fails: it is never skipped."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_ops_monitoring import ALERTS

RUNBOOK = ALERTS.parents[1] / "runbook-alerts.md"
ALERT_TESTS = ALERTS.with_name("alerts.test.yml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run tools/test-prerequisites (make test does)")
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent
    )


def test_given_the_alert_rules_then_promtool_accepts_them() -> None:
    result = promtool("check", "rules", ALERTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_given_the_alert_unit_tests_then_promtool_passes_them() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)

    assert result.returncode == 0, result.stdout + result.stderr


def test_given_a_broken_rule_then_promtool_refuses_it(tmp_path: Path) -> None:
    """The check above can fail."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(x[5m]\n",
        encoding="utf-8",
    )

    result = promtool("check", "rules", str(broken))

    assert result.returncode != 0


def test_given_each_alert_then_it_has_a_for_and_a_runbook_section() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text("utf-8"))["groups"] for r in g["rules"]]
    anchors = {
        re.sub(r"[^a-z0-9-]", "", line.removeprefix("## ").strip().lower().replace(" ", "-"))
        for line in RUNBOOK.read_text("utf-8").splitlines()
        if line.startswith("## ")
    }

    for rule in rules:
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "ops/runbook-alerts.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {RUNBOOK.name}"
