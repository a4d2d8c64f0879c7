"""Names that producers, operators and deployers rely on (contract sections 2 and 7).

Kept in one module so the topology, the consumer and the operator tools cannot drift apart.
"""

from typing import Final

EVENTS_EXCHANGE: Final = "customer-events"
EVENT_ROUTING_KEY: Final = "customer.internal-identifier.changed"
EVENT_TYPE: Final = "customer.internal-identifier.changed"

EVENTS_QUEUE: Final = "ccsync.events"
#: Bulk traffic (a CRM's initial sync, a mass replay): served with what live traffic leaves.
BACKFILL_ROUTING_KEY: Final = "customer.internal-identifier.changed.backfill"
BACKFILL_QUEUE: Final = "ccsync.backfill"
TASKS_QUEUE: Final = "ccsync.tasks"
TASKS_EXCHANGE: Final = "ccsync.tasks"
DEAD_LETTER_QUEUE: Final = "ccsync.dead-letter"
DEAD_LETTER_EXCHANGE: Final = "ccsync.dead-letter"

# Broker-held backoff: a ladder of delay queues, level n holding a message 2**n ticks.
DELAY_EXCHANGE_PREFIX: Final = "ccsync.delay."
DELAY_QUEUE_PREFIX: Final = "ccsync.delay."
#: The unit of every wait in the ladder, in milliseconds.
DELAY_TICK_MS: Final = 100
#: Levels of the ladder: the longest wait is 2**22 - 1 ticks of 100 ms, about 4.9 days.
DELAY_LEVELS: Final = 22
DELAY_RELEASE_EXCHANGE: Final = "ccsync.delay.release"

APPLY_EVENT_TASK: Final = "ccsync.apply_event"

# Dead-letter headers (contract section 7).
#: What every header ccsync sets starts with; the producer's own headers never do.
HEADER_PREFIX: Final = "x-ccsync-"
HEADER_REASON: Final = "x-ccsync-reason"
HEADER_STATUS: Final = "x-ccsync-status"
HEADER_ERROR: Final = "x-ccsync-error"
HEADER_ATTEMPTS: Final = "x-ccsync-attempts"
HEADER_EVENT_ID: Final = "x-ccsync-event-id"
HEADER_CORRELATION_ID: Final = "x-ccsync-correlation-id"
HEADER_FIRST_ATTEMPT_AT: Final = "x-ccsync-first-attempt-at"
HEADER_DEAD_LETTERED_AT: Final = "x-ccsync-dead-lettered-at"
HEADER_REPLAYED_AT: Final = "x-ccsync-replayed-at"
HEADER_REPLAY_COUNT: Final = "x-ccsync-replay-count"

#: Set by the queue on each delivery (quorum queues): differs between deliveries of one message.
HEADER_DELIVERY_COUNT: Final = "x-delivery-count"
#: The broker's records of a message's previous life in a queue; dropped whenever ccsync moves a
#: message on (retry, dead letter, replay): x-death would confuse RabbitMQ's cycle detection, and
#: a delivery count would count the old message's deliveries against the new one.
BROKER_HEADERS: Final = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        HEADER_DELIVERY_COUNT,
    }
)

#: The longest error text ccsync keeps, in ``x-ccsync-error`` and in logs (contract section 7).
MAX_ERROR_CHARS: Final = 1000

REASON_INVALID_EVENT: Final = "invalid-event"
REASON_API_REJECTED: Final = "api-rejected"
REASON_RETRIES_EXHAUSTED: Final = "retries-exhausted"
REASON_DELIVERY_LIMIT: Final = "delivery-limit"

#: A message redelivered this many times without an outcome crashed or hung the worker each time.
DELIVERY_LIMIT: Final = 5

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
#: Prefixes of the CloudEvents attributes among AMQP headers (binary mode): the AMQP binding's
#: ``cloudEvents:`` and ``cloudEvents_`` (what the CloudEvents SDK for Python writes), the RabbitMQ
#: binding's ``ce-``, and the Kafka binding's ``ce_`` (events bridged from Kafka keep theirs).
CLOUDEVENTS_HEADER_PREFIXES: Final = ("cloudEvents:", "cloudEvents_", "ce-", "ce_")
