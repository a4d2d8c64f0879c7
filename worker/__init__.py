"""ccsync: "customer internal identifier changed" events from RabbitMQ, applied to CloudCockpit.

The public surface is what ``__all__`` names: the settings, the event, its correlation id and the
exceptions. Those names keep their meaning from one release to the next; every other module of
``worker`` is the worker's own and may change without notice.

- ``load_settings()`` reads the ``Settings`` from the environment (and ``CCSYNC_SETTINGS_FILE``),
  or raises ``ConfigurationError`` naming the variable at fault.
- ``IdentifierChanged`` is the one event of the contract; ``correlation_id(tenant, event_id)`` is
  the ``X-Correlation-Id`` CloudCockpit receives for it, the same on every attempt and replay.
- Every failure ccsync raises on purpose is a ``CcsyncError``, named by what to do about it: the
  hierarchy is drawn in ``worker.exceptions``.

Importing ``worker`` loads neither celery nor kombu: the event, the settings and the processing
layer can be used without the broker's libraries. Modules of ``worker`` import each other by
their own names, never from ``worker`` itself, so that importing this package causes no cycle.
"""

from __future__ import annotations

from worker.events import IdentifierChanged, correlation_id
from worker.exceptions import (
    ApiError,
    ApiRejected,
    ApiUnavailable,
    BrokerUnreachable,
    CcsyncError,
    ConfigurationError,
    InputError,
    InvalidEvent,
    LeaseExpired,
    LedgerUnavailable,
    NoQueueBound,
    RateLimited,
    RelationshipBusy,
    TokenRejected,
    TokenUnavailable,
    TransientFailure,
)
from worker.settings import Settings, load_settings

__all__ = [
    "ApiError",
    "ApiRejected",
    "ApiUnavailable",
    "BrokerUnreachable",
    "CcsyncError",
    "ConfigurationError",
    "IdentifierChanged",
    "InputError",
    "InvalidEvent",
    "LeaseExpired",
    "LedgerUnavailable",
    "NoQueueBound",
    "RateLimited",
    "RelationshipBusy",
    "Settings",
    "TokenRejected",
    "TokenUnavailable",
    "TransientFailure",
    "correlation_id",
    "load_settings",
]
