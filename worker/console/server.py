"""``ccsync console``: the application served by uvicorn, with the audit log on stderr."""

from __future__ import annotations

import logging

from worker.console.app import create_app
from worker.console.config import console_config
from worker.http_serving import serve
from worker.observability.logs import configure_logging
from worker.settings import Settings

_log = logging.getLogger(__name__)


def run_console(settings: Settings, host: str, port: int) -> None:
    """Serves the console until interrupted; ``ConfigurationError`` without a usable token."""
    config = console_config(settings)  # before anything starts: a missing token is one line
    configure_logging("INFO", settings)
    app = create_app(config)
    _log.info("ccsync console on http://%s:%d", host, port)
    # proxy_headers off: uvicorn would believe X-Forwarded-For from any local process; the app
    # believes the trusted proxies of the settings only (``create_app``). Connection limits and
    # timeouts: worker.http_serving's, as for ccsync ingest.
    serve(app, host=host, port=port, proxy_headers=False)
