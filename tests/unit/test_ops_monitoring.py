"""Prometheus alerts and the Grafana dashboard: well-formed, and about ccsync's own metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "ops" / "grafana" / "ccsync-dashboard.json"

# The worker's metrics (issue 8), and the suffixes Prometheus gives a histogram's series.
COUNTERS = {
    "ccsync_events_received_total",
    "ccsync_events_applied_total",
    "ccsync_events_stale_total",
    "ccsync_events_duplicate_total",
    "ccsync_events_retried_total",
    "ccsync_events_dead_lettered_total",
}
HISTOGRAMS = {"ccsync_api_request_duration_seconds", "ccsync_publish_to_apply_seconds"}
GAUGES = {
    "ccsync_outage_active",
    "ccsync_queue_messages",
    "ccsync_delay_ladder_messages",
    "ccsync_paused",
    "ccsync_ledger_slow",
    "ccsync_ledger_unavailable",
}
CCSYNC_SERIES = (
    COUNTERS
    | GAUGES
    | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
# RabbitMQ's per-queue series (rabbitmq_prometheus, /metrics/per-object).
RABBITMQ_SERIES = {"rabbitmq_queue_messages_ready", "rabbitmq_queue_messages"}
# Prometheus's own series per target: whether the worker's scrape succeeded.
PROMETHEUS_SERIES = {"up"}
ALLOWED = CCSYNC_SERIES | RABBITMQ_SERIES | PROMETHEUS_SERIES

_NAME = re.compile(r"\b(?:(?:ccsync|rabbitmq)_[a-z0-9_]+|up(?=\{))")


def metric_names(expr: str) -> set[str]:
    """Every ccsync_/rabbitmq_ name in an expression, outside strings (label values)."""
    return set(_NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text("utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return document


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


# --- alerts ------------------------------------------------------------------------------------


def test_given_the_alert_rules_then_each_is_complete_and_uniquely_named(
    rules: list[dict[str, Any]],
) -> None:
    names = [rule["alert"] for rule in rules]

    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule["alert"]


def test_given_the_alert_rules_then_they_read_only_known_metrics(
    rules: list[dict[str, Any]],
) -> None:
    for rule in rules:
        names = metric_names(rule["expr"])

        assert names, f"{rule['alert']} reads no metric"
        assert names <= ALLOWED, f"{rule['alert']} reads {sorted(names - ALLOWED)}"


def test_given_the_alert_rules_then_they_cover_dead_letters_outage_and_lag(
    rules: list[dict[str, Any]],
) -> None:
    by_name = {rule["alert"]: rule for rule in rules}

    outage = by_name["CcsyncOutage"]
    lag = by_name["CcsyncConsumerLag"]
    dead = by_name["CcsyncEventsGivenUp"]
    rejected = by_name["CcsyncApiRejectingEvents"]

    assert re.search(r"ccsync_outage_active\)?\s*==\s*1", outage["expr"])
    assert outage["for"] == "5m"
    assert "rabbitmq_queue_messages_ready" in lag["expr"]
    assert "ccsync\\\\.events" in lag["expr"]
    assert "ccsync_events_dead_lettered_total" in dead["expr"]
    assert "reason" in dead["expr"], "operators need the reason to act"
    assert "retries-exhausted|delivery-limit" in dead["expr"]
    # Not every single 404: a rate above a threshold, held for a while.
    assert 'reason="api-rejected"' in rejected["expr"] and "rate(" in rejected["expr"]
    assert not rejected["expr"].rstrip().endswith("> 0") and rejected["for"] == "15m"
    for name in ("CcsyncDelayLadderGrowing", "CcsyncWorkerAbsent", "CcsyncPausedTooLong"):
        assert by_name[name]["for"], name


# --- dashboard ---------------------------------------------------------------------------------


def test_given_the_dashboard_then_it_is_grafana_json_with_unique_panel_ids(
    dashboard: dict[str, Any],
) -> None:
    panels = dashboard_panels(dashboard)

    ids = [p["id"] for p in panels]

    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    assert len(ids) == len(set(ids))
    assert {p["type"] for p in panels} <= {"row", "stat", "timeseries", "gauge", "table"}


def test_given_the_dashboard_then_its_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_given_the_dashboard_then_every_query_uses_the_prometheus_variable(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_given_the_dashboard_then_it_reads_only_known_metrics_and_shows_every_ccsync_one(
    dashboard: dict[str, Any],
) -> None:
    exprs = dashboard_exprs(dashboard)

    used = set().union(*(metric_names(expr) for expr in exprs))

    assert used <= ALLOWED, sorted(used - ALLOWED)
    shown = {name.removesuffix(s) for name in used for s in ("_bucket", "_sum", "_count")}
    missing = (COUNTERS | GAUGES | HISTOGRAMS) - (shown | used)
    assert not missing, f"no panel shows {sorted(missing)}"
    for histogram in HISTOGRAMS:
        assert f"{histogram}_bucket" in used, f"{histogram}: no quantile panel"
    assert any("by (reason)" in expr for expr in exprs), "dead letters by reason"
