"""Publisher confirms with a bound: no publish waits for the broker for ever.

py-amqp waits for a confirm without a timeout. While a memory or disk alarm lasts, or a quorum
queue has no majority, RabbitMQ confirms nothing, and the publishing thread would wait as long.
Every connection ccsync makes (``FailoverConnection``) uses ``bounded_confirm_transport``: a publish
whose confirm has not come within ``PUBLISH_CONFIRM_TIMEOUT_SECONDS`` raises ``PublishUnconfirmed``
and closes its connection, since a confirm that came later would be taken for the next publish's.
The message may or may not have been taken: whoever publishes again may duplicate it, never lose
it (retries and dead letters carry their event's id, which the ledger and the operators' tools
recognise).

``until_confirmed`` publishes again, on a fresh connection, until the broker confirms or its
patience is over, saying in the log why it waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from amqp.exceptions import RecoverableConnectionError
from kombu.exceptions import OperationalError
from kombu.transport import pyamqp

log = logging.getLogger(__name__)

#: Seconds a publish waits for the broker's confirm before its connection is given up.
PUBLISH_CONFIRM_TIMEOUT_SECONDS: Final = 10.0
#: Seconds ``until_confirmed`` keeps trying by default: long past the point where /livez fails.
PUBLISH_PATIENCE_SECONDS: Final = 600.0
#: Seconds between two tries of ``until_confirmed``, at first; doubled each time up to the next.
FIRST_REPUBLISH_PAUSE_SECONDS: Final = 0.5
#: Seconds between two tries of ``until_confirmed``, at most.
LONGEST_REPUBLISH_PAUSE_SECONDS: Final = 5.0


class PublishUnconfirmed(RecoverableConnectionError):  # type: ignore[misc]
    """The broker confirmed no publish within ``PUBLISH_CONFIRM_TIMEOUT_SECONDS`` (a memory or
    disk alarm, a quorum queue without a majority). The connection is closed; publish again on a
    new one. kombu and Celery retry it as the connection error it is."""


class _BoundedConfirmChannel(pyamqp.Channel):  # type: ignore[misc]
    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["confirm_timeout"] = kwargs.get("confirm_timeout") or PUBLISH_CONFIRM_TIMEOUT_SECONDS
        try:
            return super().basic_publish_confirm(*args, **kwargs)
        except TimeoutError:
            connection = self.connection
            if connection is not None:
                connection.collect()
            raise PublishUnconfirmed(
                f"the broker confirmed no publish within {kwargs['confirm_timeout']:g} s "
                "(a memory or disk alarm? a quorum queue without a majority?); "
                "the connection is closed"
            ) from None


class _BoundedConfirmConnection(pyamqp.Connection):  # type: ignore[misc]
    Channel = _BoundedConfirmChannel


class _BoundedConfirmTransport(pyamqp.Transport):  # type: ignore[misc]
    Connection = _BoundedConfirmConnection


class _BoundedConfirmSSLTransport(pyamqp.SSLTransport):  # type: ignore[misc]
    Connection = _BoundedConfirmConnection


def bounded_confirm_transport(transport: type[Any]) -> type[Any]:
    """kombu's py-amqp transport (plain or TLS) with its confirms bounded by
    ``PUBLISH_CONFIRM_TIMEOUT_SECONDS``; any other transport as it is."""
    bounded = {
        pyamqp.Transport: _BoundedConfirmTransport,
        pyamqp.SSLTransport: _BoundedConfirmSSLTransport,
    }
    return bounded.get(transport, transport)


#: What ``until_confirmed`` tries again after: the broker did not take the message, this time.
UNCONFIRMED = (PublishUnconfirmed, OperationalError, ConnectionError, TimeoutError)


def until_confirmed(
    publish: Callable[[], None],
    *,
    what: str,
    patience_seconds: float = PUBLISH_PATIENCE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``publish()`` (which makes or takes its own connection each time) until it returns, trying
    again after each ``UNCONFIRMED`` failure, with growing pauses, for up to ``patience_seconds``;
    then the last failure is raised. Each try is bounded by the confirm timeout."""
    give_up_at = time.monotonic() + patience_seconds
    pause = FIRST_REPUBLISH_PAUSE_SECONDS
    failed_since: float | None = None
    while True:
        try:
            publish()
        except UNCONFIRMED as exc:
            now = time.monotonic()
            if now + pause > give_up_at:
                raise
            failed_since = failed_since or now
            log.warning(
                "%s: the broker did not take it (%s); trying again, for %.0f s so far",
                what,
                exc,
                now - failed_since,
            )
            sleep(pause)
            pause = min(pause * 2, LONGEST_REPUBLISH_PAUSE_SECONDS)
            continue
        if failed_since is not None:
            log.warning(
                "%s: the broker took it after %.0f s", what, time.monotonic() - failed_since
            )
        return
