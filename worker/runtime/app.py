"""The Celery application: configuration, the intake step and the ``apply_event`` task."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import setup_logging, worker_ready
from celery.utils.nodenames import default_nodename
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message
from vine import promise  # type: ignore[import-untyped]

from worker.amqp.confirms import until_confirmed
from worker.amqp.connection import (
    FailoverConnection,
    broker_connection,
    broker_ssl_options,
    connect_within,
)
from worker.amqp.topology import (
    delay_entry_exchange,
    delay_routing_key,
    publish_declaring_topology,
    tasks_queue,
)
from worker.cloudcockpit.client import (
    ClientPerThread,
    CloudCockpitClient,
    lane_connections,
    longest_call_seconds,
    make_http_client,
    make_token_source,
    tls_context,
)
from worker.constants import (
    APPLY_EVENT_TASK,
    BACKFILL_QUEUE,
    EVENTS_QUEUE,
    HEADER_DELIVERY_COUNT,
    TASKS_EXCHANGE,
    TASKS_QUEUE,
)
from worker.observability import metrics, tracing
from worker.observability.endpoints import Liveness, LoopHeartbeat
from worker.observability.logs import configure_logging
from worker.observability.sentry import init_error_reporting
from worker.observability.tracing import configure_tracing
from worker.processing.applier import Applier, Outcome
from worker.processing.attempts import Attempt
from worker.processing.backoff import RetryPolicy
from worker.processing.budget import RateBudget
from worker.processing.dead_letters import DeadLetter, Envelope, publish_dead_letter
from worker.processing.ledger import Ledger
from worker.processing.mandatory import refused_if_returned
from worker.processing.outage import OutageGuard, OutagePolicy, trial_timeout_seconds
from worker.processing.pause import PauseStore, virtual_host
from worker.runtime.consumer_switch import ConsumerSwitch, SwitchedAMQP
from worker.runtime.intake import EventIntake
from worker.runtime.pause_watch import PauseWatcher
from worker.runtime.probes import LoopBeat, poll_queue_depths, serve_worker_endpoints
from worker.runtime.task_messages import (
    dead_letter_task_message,
    unknown_task_error,
    why_apply_event_cannot_run,
)
from worker.settings import DEFAULT_CONCURRENCY, Settings

log = logging.getLogger(__name__)

READY_MESSAGE = "ccsync worker ready: consuming ccsync.events and ccsync.tasks"
#: Connections of each pool thread's httpx client, and of the token client.
HTTP_CONNECTIONS_PER_CLIENT = 2
#: Task messages ccsync.tasks hands each pool thread ahead (Celery's prefetch multiplier).
TASK_PREFETCH_PER_THREAD = 2
#: Producer connections in the app's pool beyond one per pool thread.
SPARE_PRODUCER_CONNECTIONS = 4
#: Most threads in Celery's pool, which runs retries (``apply_event`` tasks) only: first attempts
#: are called from the caller's event loop, however many are in flight.
MAX_POOL_THREADS = 32
#: The name half of the node name `celery inspect` and Flower show, ``ccsync.<pid>@<host>`` by
#: default: one per process, since each node name has one remote-control queue of its own.
WORKER_NODE_NAME = "ccsync"
#: The queues the intake consumes (``celery control add_consumer|cancel_consumer`` switch each).
_INTAKE_QUEUES = (EVENTS_QUEUE, BACKFILL_QUEUE)
_OWN_QUEUES = f"{EVENTS_QUEUE}, {BACKFILL_QUEUE} and {TASKS_QUEUE}"


class BrokerForwarder:
    """The applier's ``Forwarder``: through the app's pool of confirming producer connections.

    Both publishes are mandatory: a message no queue takes raises ``Unroutable`` after the
    topology was declared again and the publish tried once more. A publish the broker does not
    confirm in time is made again (``until_confirmed``) until it does: the event's message stays
    unacknowledged meanwhile, and the stage that waits stops beating, which /livez reports.
    """

    def __init__(self, app: Celery) -> None:
        self._app = app

    def retry_later(self, attempt: Attempt, delay_seconds: float) -> None:
        what = f"the retry of event {attempt.event.event_id}"

        def publish() -> None:
            with self._app.producer_or_acquire() as producer:

                def send() -> None:
                    with refused_if_returned(
                        producer.channel, f"retry of {attempt.event.event_id}"
                    ):
                        self._app.send_task(
                            APPLY_EVENT_TASK,
                            kwargs=attempt.to_task_kwargs(),
                            exchange=delay_entry_exchange().name,
                            routing_key=delay_routing_key(delay_seconds, TASKS_QUEUE),
                            producer=producer,
                            mandatory=True,
                        )

                publish_declaring_topology(producer.connection, send)

        until_confirmed(publish, what=what)

    def dead_letter(self, envelope: Envelope, letter: DeadLetter) -> None:
        def publish() -> None:
            with self._app.producer_or_acquire() as producer:
                publish_declaring_topology(
                    producer.connection,
                    lambda: publish_dead_letter(producer.channel, envelope=envelope, letter=letter),
                )

        until_confirmed(publish, what=f"the dead letter of event {letter.event_id}")


class Runtime:
    """What the task needs, made once per worker process (after any fork, never before)."""

    def __init__(self, app: Celery, settings: Settings, switch: ConsumerSwitch) -> None:
        tls = tls_context(settings)
        token_http = make_http_client(
            settings, max_connections=HTTP_CONNECTIONS_PER_CLIENT, tls=tls
        )
        self.tokens = make_token_source(settings, token_http)
        api = CloudCockpitClient(
            ClientPerThread(
                lambda: make_http_client(
                    settings, max_connections=HTTP_CONNECTIONS_PER_CLIENT, tls=tls
                )
            ),
            base_url=settings.base_url,
            tokens=self.tokens,
        )
        self.ledger = Ledger.from_url(
            settings.redis_url,
            lock_ttl_seconds=settings.lock_ttl_seconds,
            wait_replicas=settings.redis_wait_replicas,
            presence=True,
        )

        def on_open() -> None:
            metrics.OUTAGE_ACTIVE.set(1)
            switch.pause()

        def on_close() -> None:
            # Consumption resumed already, for the trial write that closed the guard.
            metrics.OUTAGE_ACTIVE.set(0)

        call_lease = longest_call_seconds(settings.timeouts)
        self.guard = OutageGuard(
            self._probe,
            on_open=on_open,
            on_trial=switch.resume,
            on_close=on_close,
            policy=OutagePolicy(trial_timeout_seconds=trial_timeout_seconds(call_lease)),
        )
        self.applier = Applier(
            api=api,
            ledger=self.ledger,
            forwarder=BrokerForwarder(app),
            policy=RetryPolicy(settings.retry_delays, settings.retry_jitter),
            guard=self.guard,
            unsettled_linger_seconds=settings.unanswered_hold_seconds,
            call_lease_seconds=call_lease,
            budget=RateBudget.from_url(
                settings.redis_url,
                per_second=settings.api_rate_limit,
                deployment=virtual_host(settings.broker_url),
            ),
        )

    def _probe(self) -> bool:
        target = self.applier.probe_target
        if not self.ledger.ping():
            return False
        if target is None:
            return True
        return self.applier.api.answers(
            tenant=target.tenant, customer_id=target.customer_id, reseller_id=target.reseller_id
        )


class CcsyncConsumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer without its native delayed delivery.

    Celery turns that on for quorum queues and declares 28 ``celery_delayed_*`` queues; ccsync
    holds its backoff in its own ladder (see ``topology``) and never uses countdowns.
    """

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps = [  # noqa: RUF012 (Celery's own attribute, read only)
            step
            for step in CeleryConsumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]

    # A task message this version cannot run is dead-lettered, where Celery would drop it
    # (reject without requeue): ccsync.tasks has no dead-lettering of its own.

    def create_task_handler(self, promise: Any = promise) -> Any:
        handle = super().create_task_handler(promise)

        def on_task_received(message: Message) -> None:
            headers = message.headers
            if isinstance(headers, dict) and headers.get("task") == APPLY_EVENT_TASK:
                problem = why_apply_event_cannot_run(message)
                if problem is not None:
                    dead_letter_task_message(self.app, message, problem)
                    return
            handle(message)

        return on_task_received

    def on_unknown_message(self, body: Any, message: Message) -> None:
        dead_letter_task_message(self.app, message, "not a task message: no 'task' header")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        dead_letter_task_message(self.app, message, unknown_task_error(message))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        dead_letter_task_message(self.app, message, f"invalid task message: {exc}")

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        dead_letter_task_message(
            self.app, message, f"task message does not decode: {type(exc).__name__}: {exc}"
        )

    # `celery control add_consumer|cancel_consumer` (remote control, run in the event loop):
    # ccsync.tasks is Celery's; ccsync.events and ccsync.backfill are the intake's (each switched
    # on its own); any other queue is refused, since a Celery task consumer on it would
    # dead-letter every message that is not a task.

    def add_task_queue(self, queue: str, *args: Any, **options: Any) -> None:
        if queue in _INTAKE_QUEUES:
            self._switch_intake(queue, consume=True)
        elif queue == TASKS_QUEUE:
            super().add_task_queue(queue, *args, **options)
        else:
            log.warning("add_consumer %s refused: ccsync consumes only %s", queue, _OWN_QUEUES)

    def cancel_task_queue(self, queue: str) -> None:
        if queue in _INTAKE_QUEUES:
            self._switch_intake(queue, consume=False)
        elif queue == TASKS_QUEUE:
            super().cancel_task_queue(queue)
        else:
            log.warning("cancel_consumer %s refused: ccsync consumes only %s", queue, _OWN_QUEUES)

    def _switch_intake(self, queue: str, *, consume: bool) -> None:
        if consume and self.app.consumer_switch.paused:
            log.warning(
                "add_consumer %s: held (outage protection or ccsync pause); it resumes after",
                queue,
            )
            return
        for step in self.steps:
            if isinstance(step, EventIntake):
                for consumer in step.consumers or []:
                    if all(consumed.name != queue for consumed in consumer.queues):
                        continue
                    if consume:
                        consumer.consume()
                    else:
                        consumer.cancel()
        log.warning("%s consuming from %s", "started" if consume else "stopped", queue)


class CcsyncCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries ccsync's settings and builds its runtime lazily.

    It provides the intake's ``IntakeServices``.
    """

    # Its task consumer starts consuming only while nobody holds the consumer switch.
    amqp_cls = SwitchedAMQP

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("ccsync", **kwargs)
        self.ccsync_settings = settings
        self._runtime: Runtime | None = None
        self._runtime_lock = threading.Lock()
        self.consumer_switch = ConsumerSwitch()
        self.loop_heartbeat = LoopHeartbeat(settings.liveness_seconds)
        self.liveness = Liveness(self.loop_heartbeat)
        self.broker_consumer: Any = None  # set by LoopBeat, read by the readiness probe
        self.calls_in_flight = DEFAULT_CONCURRENCY

    @property
    def runtime(self) -> Runtime:
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = Runtime(self, self.ccsync_settings, self.consumer_switch)
            return self._runtime

    @property
    def applier(self) -> Applier:
        return self.runtime.applier


def make_app(settings: Settings, concurrency: int = DEFAULT_CONCURRENCY) -> CcsyncCelery:
    """``concurrency``: first attempts' calls in flight; Celery's pool (retries) gets as many
    threads, up to ``MAX_POOL_THREADS``."""
    app = CcsyncCelery(settings, broker=settings.broker_url, set_as_current=False)
    app.calls_in_flight = concurrency
    # Every connection Celery opens fails over like ccsync's own (each node's TLS host name).
    app.amqp.Connection = FailoverConnection
    ssl_options = broker_ssl_options(settings)
    if ssl_options is not None:
        app.conf.broker_use_ssl = ssl_options
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=False,
        task_reject_on_worker_lost=False,
        task_queues=[tasks_queue],
        task_default_queue=TASKS_QUEUE,
        task_default_exchange=TASKS_EXCHANGE,
        task_default_routing_key=TASKS_QUEUE,
        task_create_missing_queues=False,
        worker_prefetch_multiplier=TASK_PREFETCH_PER_THREAD,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=pool_threads(concurrency) + SPARE_PRODUCER_CONNECTIONS,
        broker_transport_options={"confirm_publish": True},
        # Per-task events stay off unless asked for (CeleryExtras); remote control is on, for
        # `celery -A worker inspect|status|control` and Flower.
        worker_send_task_events=False,
        worker_enable_remote_control=True,
        worker_consumer="worker.runtime.app:CcsyncConsumer",
    )
    app.steps["consumer"].add(EventIntake)  # it finds its IntakeServices in its parent's app
    app.steps["consumer"].add(LoopBeat)

    @app.task(name=APPLY_EVENT_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
    def apply_event_task(
        task: Task,
        event: dict[str, Any],
        envelope: dict[str, Any],
        attempt: int,
        first_attempt_at: str,
        inherited_lock: str | None = None,
    ) -> str:
        try:
            this = Attempt.from_task_kwargs(
                event=event,
                envelope=envelope,
                attempt=attempt,
                first_attempt_at=first_attempt_at,
                inherited_lock=inherited_lock,
            )
            sent = this.envelope
            with tracing.consuming(
                sent.headers, sent.body, sent.content_type, queue=TASKS_QUEUE
            ) as consumed:
                outcome: Outcome = app.applier.apply(
                    this,
                    delivery_count=int(task.request.get(HEADER_DELIVERY_COUNT) or 0),
                    consumed=consumed,
                )
        except Exception as exc:
            # A bug or a broker failure while publishing the outcome: hand the message back.
            # The queue counts deliveries, so a message that always fails ends as delivery-limit.
            log.exception("event %s: no outcome could be recorded", event.get("eventId"))
            raise Reject(str(exc), requeue=True) from exc
        return outcome.value

    return app


def pool_threads(concurrency: int) -> int:
    """Threads of Celery's pool for ``concurrency`` calls in flight."""
    return max(1, min(concurrency, MAX_POOL_THREADS))


@dataclass(frozen=True)
class CeleryExtras:
    """Celery features ``ccsync worker`` leaves off unless asked (docs/operations.md, "Celery's
    tools", says what each costs): per-task events, worker heartbeats, gossip and mingle. Remote
    control is always on."""

    task_events: bool = False
    heartbeat: bool = False
    gossip: bool = False
    mingle: bool = False


def check_api_settings(settings: Settings) -> None:
    """Raises ``ConfigurationError`` without API credentials, or with a CA or proxy the
    CloudCockpit lanes cannot use: a worker stops there, before it consumes anything."""
    settings.require_api_credentials()
    lane_connections(settings)


def declare_topology_within(settings: Settings) -> None:
    """Declares ccsync's exchanges and queues; raises ``BrokerUnreachable`` when the broker does
    not answer within ``settings.broker_connect_timeout`` seconds."""
    from worker.amqp.topology import declare_topology

    with broker_connection(settings) as connection:
        connect_within(connection, settings.broker_connect_timeout)
        declare_topology(connection)


def run_worker(
    settings: Settings,
    concurrency: int,
    loglevel: str,
    *,
    extras: CeleryExtras | None = None,
    node_name: str | None = None,
) -> None:
    """Declare the topology, then consume until told to stop (blocks). ``node_name`` is Celery's
    ``NAME@HOST``; by default ``ccsync.<pid>@<host name>``, so workers can share a host.

    Raises ``ConfigurationError`` without API credentials, and ``BrokerUnreachable`` when the
    broker does not answer within ``settings.broker_connect_timeout`` seconds.
    """

    check_api_settings(settings)
    configure_logging(loglevel, settings)
    init_error_reporting(settings)
    configure_tracing()
    app = make_app(settings, concurrency)
    if settings.metrics_port is not None:
        serve_worker_endpoints(app, settings.metrics_port)
    declare_topology_within(settings)
    if settings.metrics_port is not None:
        poll_queue_depths(app)
    extras = extras or CeleryExtras()
    app.conf.worker_send_task_events = extras.task_events

    def announce_ready(**_: Any) -> None:
        # Printed whatever the log level: supervisors and tests wait for this line.
        print(READY_MESSAGE, file=sys.stderr, flush=True)

    worker_ready.connect(announce_ready, weak=False)
    # Read before anything is consumed: a worker of a paused deployment starts paused.
    PauseWatcher(
        PauseStore.from_url(settings.redis_url, deployment=virtual_host(settings.broker_url)),
        switch=app.consumer_switch,
    ).start()
    # ccsync configured logging itself (JSON or text); Celery must not replace it.
    setup_logging.connect(lambda **_: None, weak=False)
    app.Worker(
        pool="threads",
        concurrency=pool_threads(concurrency),
        loglevel=loglevel,
        hostname=default_nodename(node_name or "", f"{WORKER_NODE_NAME}.{os.getpid()}"),
        without_gossip=not extras.gossip,
        without_mingle=not extras.mingle,
        without_heartbeat=not extras.heartbeat,
    ).start()
