"""Publishing a request's events: one broker connection and one confirm channel for the server's
life, replaced when they break, used from one thread (py-amqp is not thread-safe).

Each message goes to ``customer-events`` persistent and ``mandatory``: it counts as published only
once the broker confirmed it and did not return it (no queue bound would drop it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import amqp
from amqp.exceptions import AMQPError, MessageNacked
from kombu import Connection
from kombu.exceptions import KombuError

from worker.amqp.connection import broker_connection
from worker.constants import EVENT_ROUTING_KEY, EVENTS_EXCHANGE
from worker.exceptions import CcsyncError
from worker.ingest.decoding import Outgoing
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Seconds one attempt to connect may take while a request waits for it: a request answered 503
#: soon is better than one the producer's HTTP client gives up on.
CONNECT_TIMEOUT: Final = 3.0
#: Seconds to wait for the broker to confirm one message (it may be blocked by an alarm).
CONFIRM_TIMEOUT: Final = 10.0
#: Attempts at a request's messages: a connection found broken (the broker restarted while the
#: server was idle) is replaced once before the request is answered 503.
PUBLISH_ATTEMPTS: Final = 2

#: What a broken connection or channel raises: the socket, py-amqp's protocol, kombu's wrapping.
BROKER_FAILURES: Final = (OSError, AMQPError, KombuError)


class BrokerUnavailable(CcsyncError):
    """Answer 503: the events could not all be confirmed; the producer should retry later.
    The message says why, the broker's URL with its password masked."""


class EventPublisher:
    """Publishes messages with confirms over one long-lived connection.

    ``publish`` may be awaited from any number of requests at once: the messages of one request
    are published one after the other on the publisher's own thread.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-publisher")
        self._connection: Connection | None = None
        self._channel: Any = None
        self._returned: list[str] = []

    async def start(self) -> None:
        """Connect now if the broker is there; if not, the first request connects (or gets 503)."""
        try:
            await self._run(self._ensure_channel)
        except BROKER_FAILURES as exc:
            log.warning("cannot reach the broker yet, requests will try again: %s", _brief(exc))

    async def publish(
        self, messages: Sequence[Outgoing], *, routing_key: str = EVENT_ROUTING_KEY
    ) -> None:
        """Return once the broker confirmed every message, published with ``routing_key`` (the
        live lane's, or ``BACKFILL_ROUTING_KEY``); raise ``BrokerUnavailable`` if not.

        On failure, the messages before the failing one may have been published: a retried
        request repeats them, and the worker absorbs the repeats as duplicates (same eventId).
        """
        await self._run(self._publish_all, messages, routing_key)

    async def close(self) -> None:
        await self._run(self._discard)
        self._executor.shutdown(wait=True)

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _publish_all(self, messages: Sequence[Outgoing], routing_key: str) -> None:
        done = 0
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                channel = self._ensure_channel()
                while done < len(messages):
                    self._publish_one(channel, messages[done], routing_key)
                    done += 1
                return
            except BROKER_FAILURES as exc:
                self._discard()
                failure = exc
                log.warning(
                    "publishing failed (attempt %d of %d, %d of %d confirmed): %s",
                    attempt,
                    PUBLISH_ATTEMPTS,
                    done,
                    len(messages),
                    _brief(exc),
                )
        raise BrokerUnavailable(
            f"cannot publish to the broker at {self._uri()}: {_brief(failure)}"
        ) from None

    def _publish_one(self, channel: Any, message: Outgoing, routing_key: str) -> None:
        properties: dict[str, Any] = {"delivery_mode": 2}
        if message.content_type is not None:
            properties["content_type"] = message.content_type
        if message.headers:
            properties["application_headers"] = dict(message.headers)
        self._returned.clear()
        try:
            channel.basic_publish_confirm(
                amqp.Message(message.body, **properties),
                exchange=EVENTS_EXCHANGE,
                routing_key=routing_key,
                mandatory=True,
                confirm_timeout=CONFIRM_TIMEOUT,
            )
        except MessageNacked:
            # The channel stays usable: refused, not broken; trying again at once would fail too.
            raise BrokerUnavailable(
                f"the broker refused the event (nack): a queue bound to {EVENTS_EXCHANGE} is at "
                "its length limit, or could not store it"
            ) from None
        # RabbitMQ sends basic.return before the confirm of the same message.
        if self._returned:
            raise BrokerUnavailable(
                f"no queue is bound to {EVENTS_EXCHANGE} for {routing_key}, so the broker "
                f"returned the event: start 'ccsync worker' or run 'ccsync topology --apply'"
            )

    def _ensure_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._discard()
        connection = broker_connection(self._settings, connect_timeout=CONNECT_TIMEOUT)
        try:
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_return"].add(self._on_return)
            # Idempotent, as every producer of contract section 2 may do.
            channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True, auto_delete=False)
        except BaseException:
            with contextlib.suppress(*BROKER_FAILURES):
                connection.close()
            raise
        self._connection, self._channel = connection, channel
        log.info("connected to the broker at %s", self._uri())
        return channel

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(routing_key)

    def _discard(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*BROKER_FAILURES):
                connection.close()

    def _uri(self) -> str:
        return str(broker_connection(self._settings).as_uri())


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    return f"{kind}: {text}" if text and text != kind else kind
