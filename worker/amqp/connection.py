"""Connections to RabbitMQ, TLS included: the one place broker URLs become connections.

``amqps://`` URLs verify the broker's certificate chain and host name against the system's CAs,
or against ``CCSYNC_BROKER_CA_FILE`` when set. Verification is never switched off.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection

from worker.settings import Settings


def broker_ssl_options(settings: Settings) -> dict[str, Any] | None:
    """The TLS options of ``settings.broker_url``, or None for plain ``amqp://``."""
    parts = urlsplit(settings.broker_url)
    if parts.scheme != "amqps":
        return None
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        # py-amqp checks the host name only when it is given one.
        "server_hostname": parts.hostname,
    }
    if settings.broker_ca_file is not None:
        options["ca_certs"] = str(settings.broker_ca_file)
    return options


def broker_connection(settings: Settings, **options: Any) -> Connection:
    ssl_options = broker_ssl_options(settings)
    if ssl_options is not None:
        options["ssl"] = ssl_options
    return Connection(settings.broker_url, **options)
