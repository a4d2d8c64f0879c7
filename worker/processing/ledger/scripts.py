"""The ledger's Lua scripts (acquire.lua, fence.lua, leave.lua, shipped beside this module), and
how a batched call of one runs on a Redis Cluster: one script call per hash slot, all in one
pipeline.

Every script takes two keys per relationship (lock, applied) and, after ``head`` arguments for
all, the same number of arguments for each relationship; it replies one item per relationship,
in their order.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def script_text(name: str, *, package: str | None = None) -> str:
    """A Lua script shipped beside this module (acquire.lua, fence.lua, leave.lua), or in
    ``package``."""
    return resources.files(package or __package__).joinpath(name).read_text(encoding="utf-8")


def run_per_slot(
    cluster: RedisCluster,
    script: Script,
    keys: list[str],
    args: list[str | int],
    *,
    head: int,
) -> tuple[list[Any], set[ClusterNode]]:
    """One batched call of ``script`` on a cluster: one script call per hash slot, each with its
    relationships' keys and arguments, all sent in one pipeline. Returns the replies in the
    batch's order, and the primaries that ran a call (they hold its writes). A call's error is
    raised, after every call ran."""
    count = len(keys) // 2
    width = (len(args) - head) // count if count else 0
    groups: dict[int, list[int]] = {}
    for i in range(count):
        slot = cluster.keyslot(keys[2 * i])  # type: ignore[no-untyped-call]
        groups.setdefault(slot, []).append(i)
    calls = list(groups.values())
    results: list[Any] = [None] * len(calls)
    nodes: set[ClusterNode] = set()
    pending = list(range(len(calls)))
    # A primary that restarted (or was promoted) has forgotten the script: load it on every
    # primary and run again only the calls it refused, which did nothing.
    for loaded in (False, True):
        pipeline = cluster.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for c in pending:
            members = calls[c]
            call_keys = [key for i in members for key in keys[2 * i : 2 * i + 2]]
            call_args = args[:head] + [
                arg for i in members for arg in args[head + width * i : head + width * (i + 1)]
            ]
            # redis-py blocks its pipeline's evalsha(), not the command. The call is sent to
            # its slot's primary as the client knows it: left to find the keys itself, the
            # pipeline would ask the server (COMMAND GETKEYS) for every call.
            node = cluster.get_node_from_key(call_keys[0])  # type: ignore[no-untyped-call]
            nodes.add(node)
            pipeline.execute_command(
                "EVALSHA",
                script.sha,
                len(call_keys),
                *call_keys,
                *call_args,
                target_nodes=node,
            )
        for c, reply in zip(pending, pipeline.execute(raise_on_error=False), strict=True):
            results[c] = reply
        pending = [c for c in pending if isinstance(results[c], NoScriptError)]
        if not pending or loaded:
            break
        cluster.script_load(script.script)
    for reply in results:
        if isinstance(reply, Exception):
            raise reply
    replies: list[Any] = [None] * count
    for members, reply in zip(calls, results, strict=True):
        for i, item in zip(members, reply, strict=True):
            replies[i] = item
    return replies, nodes
