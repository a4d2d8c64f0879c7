"""The Celery app where Celery's own tools look for one: ``celery -A worker inspect ping``.

``celery -A worker`` finds ``worker.celery.app`` (``celery`` names the same app). The app is
built on first access to either name, from the settings in the environment
(``CCSYNC_BROKER_URL``, ``CCSYNC_BROKER_CA_FILE``, ...): importing this module reads no setting
and opens no connection. It is the app ``ccsync worker`` runs, so that ``inspect``, ``status``,
``control`` and Flower speak to a running worker over the same broker and exchanges. Start the
worker itself with ``ccsync worker``, which declares the topology first.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.runtime.app import CcsyncCelery

#: The names Celery's find_app tries, in order; both are the one app.
APP_NAMES = ("app", "celery")

_lock = threading.Lock()
_app: CcsyncCelery | None = None


def _the_app() -> CcsyncCelery:
    global _app
    with _lock:
        if _app is None:
            from worker.runtime.app import make_app
            from worker.settings import load_settings

            _app = make_app(load_settings())
        return _app


def __getattr__(name: str) -> CcsyncCelery:
    # A module attribute made on first use (PEP 562): Celery's find_app reads ``app``.
    if name in APP_NAMES:
        return _the_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
