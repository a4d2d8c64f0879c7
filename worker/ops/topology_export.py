"""The broker topology as data: what ``declare_topology`` declares, recorded without a broker.

Used by ``ccsync topology`` to print it and by ``tools.generate_ops`` to write
ops/rabbitmq/definitions.json; both read the declarations themselves, so neither can describe
something the worker does not declare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from kombu.transport.base import to_rabbitmq_queue_arguments

from worker.amqp.topology import declare_topology


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueSpec:
    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BindingSpec:
    source: str
    destination: str
    destination_type: str  # "queue" or "exchange", as RabbitMQ's definitions name them
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]


_Spec = TypeVar("_Spec", ExchangeSpec, QueueSpec)


class TopologyConflict(Exception):
    """One object declared twice with different properties: the broker would refuse it too."""


class _RecordingChannel:
    """Stands in for an AMQP channel and keeps what ``declare_topology`` asks the broker for.

    Recording the real declarations, rather than re-listing the kombu objects, is what keeps the
    definitions file from ever describing something the worker does not declare.
    """

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeSpec] = {}
        self.queues: dict[str, QueueSpec] = {}
        self.bindings: dict[tuple[str, str, str, str], BindingSpec] = {}

    def prepare_queue_arguments(self, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = to_rabbitmq_queue_arguments(arguments, **options)
        return result

    def exchange_declare(
        self,
        exchange: str,
        type: str,
        durable: bool,
        auto_delete: bool,
        arguments: dict[str, Any] | None,
        nowait: bool = False,
        passive: bool = False,
    ) -> None:
        if passive:
            return
        spec = ExchangeSpec(exchange, type, durable, auto_delete, dict(arguments or {}))
        _keep(self.exchanges, exchange, spec)

    def queue_declare(
        self,
        queue: str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any] | None,
        nowait: bool = False,
    ) -> tuple[str, int, int]:
        if not passive:
            spec = QueueSpec(queue, durable, auto_delete, exclusive, dict(arguments or {}))
            _keep(self.queues, queue, spec)
        return queue, 0, 0

    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        nowait: bool = False,
    ) -> None:
        self._bind(BindingSpec(exchange, queue, "queue", routing_key, dict(arguments or {})))

    def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str,
        nowait: bool,
        arguments: dict[str, Any] | None,
    ) -> None:
        self._bind(BindingSpec(source, destination, "exchange", routing_key, dict(arguments or {})))

    def _bind(self, spec: BindingSpec) -> None:
        key = (spec.source, spec.destination_type, spec.destination, spec.routing_key)
        self.bindings.setdefault(key, spec)


def _keep(registry: dict[str, _Spec], name: str, spec: _Spec) -> None:
    known = registry.setdefault(name, spec)
    if known != spec:
        raise TopologyConflict(f"{name} is declared twice, differently: {known} and {spec}")


class _RecordingConnection:
    def __init__(self) -> None:
        self.default_channel = _RecordingChannel()

    def channel(self) -> _RecordingChannel:
        return self.default_channel


def record_topology() -> Topology:
    """What ``declare_topology`` declares, in the order it declares it, without a broker."""
    connection = _RecordingConnection()
    declare_topology(connection)
    channel = connection.default_channel
    return Topology(
        tuple(channel.exchanges.values()),
        tuple(channel.queues.values()),
        tuple(channel.bindings.values()),
    )


def topology_json(topology: Topology) -> dict[str, list[dict[str, Any]]]:
    """The topology as plain JSON objects, named the way RabbitMQ's definitions name them."""
    return {
        "exchanges": [
            {
                "name": e.name,
                "type": e.type,
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": False,
                "arguments": e.arguments,
            }
            for e in topology.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": q.arguments,
            }
            for q in topology.queues
        ],
        "bindings": [
            {
                "source": b.source,
                "destination": b.destination,
                "destination_type": b.destination_type,
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            }
            # kombu keeps a queue's bindings in a set: sorted, so the file is the same every run.
            for b in sorted(
                topology.bindings,
                key=lambda b: (b.source, b.destination_type, b.destination, b.routing_key),
            )
        ],
    }


def definitions(topology: Topology | None = None, vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions of the topology in ``vhost``, for ``rabbitmqctl import_definitions``.

    Only vhost-scoped objects: importing users or vhosts into an operator's broker would change
    accounts it already has (the compose file brings its own in a separate file). No policies
    either: every property is a queue argument, because the worker declares the queues with those
    arguments at start and the broker refuses a declaration whose arguments differ; a policy would
    be a second place to say the same thing, free to disagree.
    """
    plain = topology_json(topology or record_topology())
    return {
        "exchanges": [{**e, "vhost": vhost} for e in plain["exchanges"]],
        "queues": [{**q, "vhost": vhost} for q in plain["queues"]],
        "bindings": [{**b, "vhost": vhost} for b in plain["bindings"]],
        "policies": [],
    }
