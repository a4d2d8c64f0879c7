"""Redis clients from ``CCSYNC_REDIS_URL``: one server (``redis://``, ``rediss://``, ``unix://``)
or the primary that Redis Sentinel names (``redis+sentinel://…/service_name``).

A Sentinel client asks the Sentinels for the primary when it connects, and again after a failover
(a connection refused, or a replica answering READONLY): the ledger follows a promotion without a
restart. Commands in flight when the primary dies fail, like any Redis failure, and are retried.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from worker.settings import SENTINEL_SCHEME, redis_sentinel_url


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def redis_client(
    url: str,
    *,
    timeout: float,
    health_check_interval: float = 0,
    max_connections: int | None = None,
    **extra: Any,
) -> redis.Redis:
    """A client of the Redis ``url`` names (its primary, through Sentinel), whose connects and
    commands each give up after ``timeout`` seconds; ``max_connections`` bounds its pool, and
    ``extra`` goes to redis-py's connection pool as it is (``retry``, say)."""
    options: dict[str, Any] = {
        **extra,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": health_check_interval,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
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
