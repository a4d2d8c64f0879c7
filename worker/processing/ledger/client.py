"""Redis clients from ``CCSYNC_REDIS_URL``: one server (``redis://``, ``rediss://``, ``unix://``),
the primary that Redis Sentinel names (``redis+sentinel://…/service_name``), or a Redis Cluster
(``redis+cluster://host:port,…``).

A Sentinel client asks the Sentinels for the primary when it connects, and again after a failover
(a connection refused, or a replica answering READONLY): the ledger follows a promotion without a
restart. Commands in flight when the primary dies fail, like any Redis failure, and are retried.

A cluster client (redis-py's ``RedisCluster``) learns every node and slot from the nodes the URL
names, when it is made: unlike the others, making one fails when no node answers. It sends each
command to the primary of its key's slot and follows MOVED and ASK when slots move.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from worker.exceptions import LedgerUnavailable
from worker.settings import CLUSTER_SCHEME, SENTINEL_SCHEME, redis_cluster_url, redis_sentinel_url

#: What ``redis_client`` gives: a client of one server (perhaps Sentinel's primary) or a cluster's.
RedisClient = redis.Redis | RedisCluster
#: What a client of any kind raises when Redis does not answer as asked: a cluster client's own
#: failures (no node reachable, slots not covered) are not ``RedisError``.
REDIS_FAILURES = (redis.RedisError, RedisClusterException)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(f"{CLUSTER_SCHEME}://")


def redis_client(
    url: str,
    *,
    timeout: float,
    health_check_interval: float = 0,
    max_connections: int | None = None,
    **extra: Any,
) -> RedisClient:
    """A client of the Redis ``url`` names (its primary, through Sentinel; or the cluster), whose
    connects and commands each give up after ``timeout`` seconds; ``max_connections`` bounds its
    pool (a cluster's: each node's), and ``extra`` goes to redis-py's connection pool as it is
    (``retry``, say). A cluster client raises ``redis.exceptions.RedisClusterException`` when
    none of the URL's nodes answers."""
    options: dict[str, Any] = {
        **extra,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": health_check_interval,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    if is_cluster_url(url):
        return _cluster_client(url, options)
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    parsed = redis_sentinel_url(url)
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        # The Sentinels themselves are asked without credentials: the URL's are the servers'.
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    primary: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        parsed.service_name,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return primary


def _cluster_client(url: str, options: dict[str, Any]) -> RedisCluster:
    parsed = redis_cluster_url(url)
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in parsed.nodes
        ],
        username=parsed.username,
        password=parsed.password,
        **options,
    )


@contextmanager
def unavailable_on_failure(what: str = "ledger unavailable") -> Iterator[None]:
    """Redis failures of any client (``REDIS_FAILURES``) become ``LedgerUnavailable``, a
    transient failure: events wait, nothing is applied blindly. ``what`` starts its message."""
    try:
        yield
    except REDIS_FAILURES as exc:
        raise LedgerUnavailable(f"{what}: {type(exc).__name__}") from None
