"""Sentry: errors reported with their event's tags, expected noise kept out, secrets never sent.

Retries and ``api-rejected`` are logged as INFO/WARNING and never become Sentry events; only
ERROR lines (exhausted retries, poison messages, outages, bugs) do. Every string of an outgoing
event (keys too) passes ``worker.observability.redaction`` before it leaves; Sentry's own scrubber
also empties the values of keys that name a credential.
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from worker.observability.redaction import Redaction
from worker.settings import Settings

DENYLIST = [*DEFAULT_DENYLIST, "authorization", "client_secret", "access_token", "bearer"]


def init_error_reporting(settings: Settings) -> bool:
    """Start Sentry when ``SENTRY_DSN`` is set; returns whether it did."""
    if settings.sentry_dsn is None:
        return False
    redaction = Redaction.from_settings(settings)

    def scrub(event: Any, hint: Any) -> Any:
        return redaction.tree(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        integrations=[
            CeleryIntegration(propagate_traces=False),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        send_default_pii=False,
        include_local_variables=False,
        event_scrubber=EventScrubber(recursive=True, denylist=DENYLIST),
        before_send=scrub,
        before_breadcrumb=scrub,
        traces_sample_rate=0.0,
    )
    return True
