"""Sentry: errors reported with their event's tags, expected noise kept out, secrets never sent.

Retries and ``api-rejected`` are logged as INFO/WARNING and never become Sentry events; only
ERROR lines (exhausted retries, poison messages, outages, bugs) do. Every string of an outgoing
event is scrubbed of the configured secrets' values, wherever they appear, before it leaves.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from worker.settings import Settings

FILTERED = "[Filtered]"
DENYLIST = [*DEFAULT_DENYLIST, "authorization", "client_secret", "access_token", "bearer"]


def init_error_reporting(settings: Settings) -> bool:
    """Start Sentry when ``SENTRY_DSN`` is set; returns whether it did."""
    if settings.sentry_dsn is None:
        return False
    secrets = _secret_values(settings)

    def scrub(event: Any, hint: Any) -> Any:
        return _replace_secrets(event, secrets)

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


def _secret_values(settings: Settings) -> list[str]:
    values = [
        secret.get_secret_value()
        for secret in (settings.token, settings.client_secret)
        if secret is not None
    ]
    for url in (*settings.broker_urls, settings.redis_url):
        password = _url_password(url)
        if password:
            # Clients use the decoded password; the URL holds its percent-encoded form.
            values += [password, unquote(password)]
    # Secrets shorter than this would scrub ordinary words; no real token or password is.
    return [value for value in dict.fromkeys(values) if len(value) >= 6]


def _url_password(url: str) -> str | None:
    _, _, rest = url.partition("://")
    credentials, at, _ = rest.rpartition("@")
    if not at or ":" not in credentials:
        return None
    return credentials.split(":", 1)[1] or None


def _replace_secrets(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {key: _replace_secrets(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_secrets(item, secrets) for item in value]
    return value
