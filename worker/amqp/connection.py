"""Connections to RabbitMQ, TLS included: the one place broker URLs become connections.

``amqps://`` URLs verify the broker's certificate chain and host name against the system's CAs,
or against ``CCSYNC_BROKER_CA_FILE`` when set. Verification is never switched off.

``connect_within`` opens a connection or fails in time, with a ``BrokerUnreachable`` that a
command prints as its one line.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Final
from urllib.parse import urlsplit

from kombu import Connection

from worker.exceptions import BrokerUnreachable
from worker.settings import Settings

#: Seconds one attempt to connect may take at most: TCP connect, TLS and the AMQP handshake.
CONNECT_ATTEMPT_TIMEOUT: Final = 5.0
#: Seconds between two attempts to connect.
CONNECT_RETRY_INTERVAL: Final = 1.0
#: Seconds of the shortest attempt worth starting before a deadline.
MIN_ATTEMPT_TIMEOUT: Final = 0.25


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


def connect_within(connection: Connection, seconds: float) -> None:
    """Open ``connection``, trying again every ``CONNECT_RETRY_INTERVAL`` s for up to ``seconds``.

    Returns once connected. Raises ``BrokerUnreachable`` (naming the URL with its password masked
    and the last error, in one line) when no attempt succeeded within ``seconds``. Each attempt
    lasts at most ``CONNECT_ATTEMPT_TIMEOUT`` and ends by the deadline, except a first one given
    less than ``MIN_ATTEMPT_TIMEOUT``, which gets that much. An error that trying again cannot
    cure (the login or the virtual host refused) raises at once.
    """
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        connection.connect_timeout = min(
            CONNECT_ATTEMPT_TIMEOUT, max(remaining, MIN_ATTEMPT_TIMEOUT)
        )
        try:
            # One attempt: kombu's own retries sleep past any deadline.
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            return
        except connection.recoverable_connection_errors as exc:
            if deadline - time.monotonic() < CONNECT_RETRY_INTERVAL + MIN_ATTEMPT_TIMEOUT:
                raise BrokerUnreachable(
                    f"cannot reach the broker at {connection.as_uri()} within {seconds:g} s: "
                    f"{_one_line(exc)}"
                ) from None
        except (*connection.connection_errors, *connection.channel_errors) as exc:
            # py-amqp raises a refused login as a channel error (AccessRefused)
            raise BrokerUnreachable(
                f"the broker at {connection.as_uri()} refused the connection: {_one_line(exc)}"
            ) from None
        time.sleep(CONNECT_RETRY_INTERVAL)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    return f"{kind}: {text}" if text and text != kind else kind
