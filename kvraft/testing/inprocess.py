"""Clusters assembled in-process: real aiohttp servers on 127.0.0.1 and real SQLite
files, hosting the controller and data group 1 (which owns every key)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from kvraft.bootstrap import bootstrap, wait_groups_at
from kvraft.config import NodeSettings
from kvraft.raft import Role
from kvraft.runtime.node import Node, NodeConfig
from kvraft.testing.moto import free_port


async def single_node(data_dir: Path, settings: NodeSettings | None = None) -> Node:
    """Start the node and bootstrap group 1; the caller stops it (``await node.stop()``)."""
    addr = f"127.0.0.1:{free_port()}"
    node = Node(NodeConfig(node_id=1, listen=addr, peers={1: addr}, data_dir=data_dir,
                           secret="s", groups=(0, 1), settings=settings or NodeSettings()))
    await node.start()
    try:
        num = await asyncio.to_thread(bootstrap, [addr], "s", {1: {1: addr}})
        await asyncio.to_thread(wait_groups_at, [addr], [1], num, secret="s")
    except BaseException:
        await node.stop()
        raise
    return node


@contextlib.asynccontextmanager
async def nodes_running(data_dir: Path, n: int = 3, *, lease_reads: bool = False
                        ) -> AsyncIterator[tuple[list[Node], dict[int, str]]]:
    """``n`` nodes (ids 1..n) hosting the controller and group 1, bootstrapped; yields
    (nodes, id -> address) and stops them all (clearing injected faults) on exit."""
    addrs = {i: f"127.0.0.1:{free_port()}" for i in range(1, n + 1)}
    base = NodeSettings()
    settings = dataclasses.replace(base, replica=dataclasses.replace(
        base.replica, lease_reads=int(lease_reads)))
    nodes = [Node(NodeConfig(node_id=i, listen=a, peers=addrs, data_dir=data_dir / f"n{i}",
                             secret="s", groups=(0, 1), settings=settings))
             for i, a in addrs.items()]
    try:
        for node in nodes:
            await node.start()
        num = await asyncio.to_thread(bootstrap, list(addrs.values()), "s", {1: addrs})
        await asyncio.to_thread(wait_groups_at, list(addrs.values()), [1], num, secret="s")
        yield nodes, addrs
    finally:
        for node in nodes:
            if node.transport is not None:
                node.transport.faults.clear()
            await node.stop()


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait until ``cond()`` holds (polled every 10 ms); AssertionError after the
    timeout, naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def leader_of(nodes: list[Node], group: int = 1) -> Node | None:
    """The node whose replica of ``group`` leads now, if any."""
    return next((n for n in nodes if n.replicas[group].soft.role == Role.LEADER), None)
