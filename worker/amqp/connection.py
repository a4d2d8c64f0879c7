"""Connections to RabbitMQ, TLS included: the one place broker URLs become connections.

``amqps://`` URLs verify the broker's certificate chain and host name against the system's CAs,
or against ``CCSYNC_BROKER_CA_FILE`` when set. Verification is never switched off.

``connect_within`` opens a connection or fails in time, with a ``BrokerUnreachable`` that a
command prints as its one line.

Several brokers (``CCSYNC_BROKER_URL`` as ``amqp://a;amqp://b;amqp://c``, the nodes of one
cluster): a connection tries them in turn, round robin, at start and whenever it is lost, so a
worker reconnects to a surviving node. ``FailoverConnection`` checks each node's TLS certificate
against that node's own host name.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Final
from urllib.parse import urlsplit

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from worker.amqp.confirms import bounded_confirm_transport
from worker.exceptions import BrokerUnreachable
from worker.settings import Settings

#: Seconds one attempt to connect may take at most: TCP connect, TLS and the AMQP handshake.
CONNECT_ATTEMPT_TIMEOUT: Final = 5.0
#: Seconds between two attempts to connect.
CONNECT_RETRY_INTERVAL: Final = 1.0
#: Seconds of the shortest attempt worth starting before a deadline.
MIN_ATTEMPT_TIMEOUT: Final = 0.25


def broker_ssl_options(settings: Settings) -> dict[str, Any] | None:
    """The TLS options of ``settings.broker_url`` (its first broker), or None for plain
    ``amqp://``; ``FailoverConnection`` names each other broker's host when it switches."""
    parts = urlsplit(settings.broker_urls[0])
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


class FailoverConnection(Connection):  # type: ignore[misc]
    """A kombu connection that, switching to another broker of its list, checks that broker's
    certificate against its own host name (kombu would keep the first broker's), and whose
    publisher confirms are bounded (``worker.amqp.confirms``)."""

    def get_transport_cls(self) -> Any:
        return bounded_confirm_transport(super().get_transport_cls())

    def switch(self, conn_str: str) -> None:
        super().switch(conn_str)
        options: Any = getattr(self, "ssl", None)
        if isinstance(options, dict) and "server_hostname" in options:
            self.ssl = {**options, "server_hostname": urlsplit(conn_str).hostname}


def broker_connection(settings: Settings, **options: Any) -> Connection:
    ssl_options = broker_ssl_options(settings)
    if ssl_options is not None:
        options["ssl"] = ssl_options
    return FailoverConnection(settings.broker_url, **options)


def masked_location(connection: Connection) -> str:
    """The broker URL, or every URL of its list, with passwords masked: for one-line errors."""
    urls = connection.alt or []
    if len(urls) < 2:
        return str(connection.as_uri())
    return ";".join(str(maybe_sanitize_url(url)) for url in urls)


def connect_within(connection: Connection, seconds: float) -> None:
    """Open ``connection``, trying again every ``CONNECT_RETRY_INTERVAL`` s for up to ``seconds``.

    Returns once connected. Raises ``BrokerUnreachable`` (naming the URL, or each of several, with
    its password masked and the last error, in one line) when no attempt succeeded within
    ``seconds``. Each attempt lasts at most ``CONNECT_ATTEMPT_TIMEOUT`` and ends by the deadline,
    except a first one given less than ``MIN_ATTEMPT_TIMEOUT``, which gets that much; with several
    brokers, each attempt goes to the next one. An error that trying again cannot cure (the login
    or the virtual host refused) raises at once.
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
                    f"cannot reach the broker at {masked_location(connection)} within "
                    f"{seconds:g} s: {_one_line(exc)}"
                ) from None
            # The next attempt goes to the next broker of the list, if there are several.
            connection.maybe_switch_next()
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
