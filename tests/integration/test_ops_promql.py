"""The PromQL of the alerts and the dashboard, parsed with Prometheus's own grammar (node)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.integration.ops_node import PROMQL_CHECK, run_node
from tests.unit.test_ops_monitoring import ALERTS, ALLOWED, DASHBOARD, dashboard_exprs


def analyse(exprs: list[str]) -> list[dict[str, Any]]:
    # Grafana's interval variables are not PromQL; any duration stands in for them.
    plain = [re.sub(r"\$__\w+", "5m", expr) for expr in exprs]
    result = run_node(PROMQL_CHECK, "check.js", stdin=json.dumps(plain))
    assert result.returncode == 0, result.stderr
    analysed: list[dict[str, Any]] = json.loads(result.stdout)
    return analysed


def test_given_the_grammar_then_it_refuses_broken_promql() -> None:
    """The checks below can fail: a missing bracket and an unknown function are errors."""
    results = analyse(["rate(ccsync_events_received_total[5m]", "ratte(x[5m])"])

    assert [r["ok"] for r in results] == [False, False]


def test_given_the_alert_rules_then_each_expression_parses_and_reads_known_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text("utf-8"))["groups"] for r in g["rules"]]

    results = analyse([rule["expr"] for rule in rules])

    for rule, result in zip(rules, results, strict=True):
        assert result["ok"], f"{rule['alert']}: {result['errors']}"
        assert result["unnamed"] == 0, rule["alert"]
        assert result["metrics"], rule["alert"]
        assert set(result["metrics"]) <= ALLOWED, f"{rule['alert']}: {result['metrics']}"


def test_given_the_dashboard_then_each_query_parses_and_reads_known_metrics() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text("utf-8")))

    results = analyse(exprs)

    for result in results:
        assert result["ok"], f"{result['expr']}: {result['errors']}"
        assert result["unnamed"] == 0, result["expr"]
        assert set(result["metrics"]) <= ALLOWED, result["expr"]
