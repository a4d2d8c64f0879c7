"""What the benchmark's own worker processes share, importing nothing of ccsync's code path.

``patch_arguments`` is the PATCH every baseline sends for one event: the path, body and headers
ccsync sends, so that the systems differ in how they get there and not in what they ask.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from typing import Any

#: ``worker.events.CORRELATION_NAMESPACE``, copied so that the baselines import no ccsync code.
CORRELATION_NAMESPACE = uuid.UUID("5b0f4f7e-2a4c-5d69-9d0e-6363737973e1")


def patch_arguments(
    event: dict[str, Any], *, token: str, default_tenant: str
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The path (below the base URL), JSON body and headers of the PATCH for ``event``."""
    tenant = event.get("tenant") or default_tenant
    name = json.dumps([tenant, event["eventId"]], ensure_ascii=False, separators=(",", ":"))
    return (
        f"/v1/Customers/{event['customerId']}/internal-identifier",
        {
            "internalIdentifier": event.get("internalIdentifier"),
            "resellerId": event.get("resellerId"),
        },
        {
            "Authorization": f"Bearer {token}",
            "X-Tenant": tenant,
            "X-Correlation-Id": str(uuid.uuid5(CORRELATION_NAMESPACE, name)),
        },
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the process's loop ends when it is set."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    return stop
