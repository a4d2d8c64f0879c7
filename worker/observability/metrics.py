"""Prometheus metrics of the worker, served on ``CCSYNC_METRICS_PORT`` when it is set.

Names are part of what operators rely on: ops/prometheus/alerts.yml and the Grafana dashboard
use exactly these.

Under ``ccsync worker --processes N`` the parent serves the sum of its children's counters and
histograms (prometheus_client's multiprocess mode); each gauge is the largest value of the
children alive (``livemax``: the worst stage, an outage or pause seen by any child), so a gauge
keeps one series per label set as with one process.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

#: How the parent of several worker processes combines a gauge of its children.
GAUGE_ACROSS_PROCESSES: Final = "livemax"

EVENTS_RECEIVED = Counter("ccsync_events_received", "Messages taken from ccsync.events")
EVENTS_APPLIED = Counter("ccsync_events_applied", "Events applied in CloudCockpit")
EVENTS_STALE = Counter("ccsync_events_stale", "Events skipped: a newer one was applied")
EVENTS_DUPLICATE = Counter("ccsync_events_duplicate", "Events skipped: already applied")
EVENTS_RETRIED = Counter(
    "ccsync_events_retried", "Failed attempts sent back for a retry, by reason", ["reason"]
)
EVENTS_DEAD_LETTERED = Counter(
    "ccsync_events_dead_lettered", "Events dead-lettered, by reason", ["reason"]
)
API_REQUEST_SECONDS = Histogram(
    "ccsync_api_request_duration_seconds",
    "Duration of each PATCH to CloudCockpit, by HTTP status ('none': no answer)",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: The ``status`` of a call that got no HTTP answer (timeout, refused, reset).
NO_ANSWER = "none"
API_RATE_LIMIT = Gauge(
    "ccsync_api_rate_limit_calls_per_second",
    "The API rate budget of each tenant, fleet-wide (CCSYNC_API_RATE_LIMIT); 0: none configured",
)
API_RATE_WAIT_SECONDS = Histogram(
    "ccsync_api_rate_wait_seconds",
    "Time a call waited for its tenant's API rate budget (or a 429's Retry-After) before it "
    "was made; calls of a tenant without a limit do not wait and are not counted",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PUBLISH_TO_APPLY_SECONDS = Histogram(
    "ccsync_publish_to_apply_seconds",
    "From the intake taking an event to CloudCockpit accepting it, retries included",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
)
STAGE_BEAT_AGE_SECONDS = Gauge(
    "ccsync_stage_beat_age_seconds",
    "Seconds since a stage of the first-attempt pipeline (gate, caller, settler) last went round:"
    " above CCSYNC_LIVENESS_SECONDS, the stage is stalled and /livez fails",
    ["stage"],
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
OUTAGE_ACTIVE = Gauge(
    "ccsync_outage_active",
    "1 while outage protection holds consumption",
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
LEDGER_SLOW = Gauge(
    "ccsync_ledger_slow",
    "1 while the ledger's Redis answers too late for calls to be made (a slow spell)",
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
LEDGER_UNAVAILABLE = Gauge(
    "ccsync_ledger_unavailable",
    "1 while the ledger's Redis does not answer at all",
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
QUEUE_MESSAGES = Gauge(
    "ccsync_queue_messages",
    "Messages ready in a work queue (ccsync.events, ccsync.backfill, ccsync.tasks,"
    " ccsync.dead-letter), polled",
    ["queue"],
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
DELAY_LADDER_MESSAGES = Gauge(
    "ccsync_delay_ladder_messages",
    "Attempts waiting in the delay ladder (all rungs), polled",
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)
VERIFY_CHECKED = Counter(
    "ccsync_verify_checked",
    "Relationships ccsync verify read back, by status (in-sync, drift, missing, unknown, error)",
    ["status"],
)
VERIFY_REPAIRS = Counter(
    "ccsync_verify_repairs",
    "Repairs by ccsync verify --repair, by outcome (repaired, superseded, busy, failed)",
    ["outcome"],
)
PAUSED = Gauge(
    "ccsync_paused",
    "1 while an operator's ccsync pause holds consumption, labelled with its reason and who paused",
    ["reason", "by"],
    multiprocess_mode=GAUGE_ACROSS_PROCESSES,
)


def set_paused(reason: str | None, by: str = "") -> None:
    """``ccsync_paused``: one series, 1 with the pause's reason and author, or 0 unlabelled."""
    # Cleared series live on in a multiprocess file: each is set to 0 first, so none stays at 1.
    for sample in (sample for metric in PAUSED.collect() for sample in metric.samples):
        PAUSED.labels(sample.labels["reason"], sample.labels["by"]).set(0)
    PAUSED.clear()
    if reason is None:
        PAUSED.labels("", "").set(0)
    else:
        PAUSED.labels(reason, by).set(1)
