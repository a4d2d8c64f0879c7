"""Logs: one JSON object per line in production, readable text on a terminal.

``CCSYNC_LOG_FORMAT`` is ``json``, ``text`` or ``auto`` (text when stderr is a terminal). Fields
given as ``extra=`` (eventId, correlationId, tenant, customerId, outcome, attempt, duration) become
JSON keys; so do ``trace_id`` and ``span_id`` while a span ccsync records is current
(``worker.observability.tracing``): the attempt's span, around its call and its outcome line.
Every line, its traceback too, passes ``worker.observability.redaction`` on its way out.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from worker.observability.redaction import Redaction
from worker.observability.tracing import current_span_ids
from worker.settings import Settings

EVENT_FIELDS = (
    "eventId",
    "correlationId",
    "tenant",
    "customerId",
    "outcome",
    "attempt",
    "duration",
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, redaction: Redaction) -> None:
        super().__init__()
        self._redaction = redaction

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        # Read while the line is formatted, in the thread that logs it: handlers format at once.
        ids = current_span_ids()
        if ids is not None:
            document["trace_id"], document["span_id"] = ids
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return self._redaction.text(json.dumps(document, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self, redaction: Redaction) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
        self._redaction = redaction

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in EVENT_FIELDS if hasattr(record, key)]
        return self._redaction.text(f"{line} [{' '.join(fields)}]" if fields else line)


def configure_logging(level: str, settings: Settings) -> None:
    """Root logging to stderr at ``level``, in ``settings.log_format``, every line redacted of
    the secrets ``settings`` hold."""
    log_format = settings.log_format
    redaction = Redaction.from_settings(settings)
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redaction) if use_json else TextFormatter(redaction))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP request would drown the outcome lines that matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # Celery's own "received" and "succeeded" lines per task: ccsync's outcome line says more.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
