"""A node assembled in-process (real aiohttp server on 127.0.0.1, real SQLite files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft import AsyncClient, errors
from kvraft.raft import InvariantViolation
from kvraft.raft.types import Message, MsgType
from kvraft.runtime.node import Node, NodeConfig
from kvraft.testing import free_port


async def _single_node(tmp_path: Path) -> Node:
    addr = f"127.0.0.1:{free_port()}"
    node = Node(NodeConfig(node_id=1, listen=addr, peers={1: addr}, data_dir=tmp_path / "n1",
                           secret="s"))
    await node.start()
    return node


async def test_single_node_group_serves(tmp_path: Path) -> None:
    node = await _single_node(tmp_path)
    try:
        async with AsyncClient([node.cfg.listen]) as c:
            await c.put("k", "v")
            assert await c.get("k") == "v"
    finally:
        await node.stop()


async def test_broken_invariant_stops_the_replica_loudly(tmp_path: Path) -> None:
    node = await _single_node(tmp_path)
    try:
        async with AsyncClient([node.cfg.listen], timeout_s=1.0) as c:
            for i in range(3):
                await c.put(f"k{i}", "v")
            replica = node.replicas[1]
            assert replica.core is not None

            def broken_step(m: Message) -> None:
                raise InvariantViolation("entry 2 conflicts with committed entry (commit 3)")

            replica.core.step = broken_step  # type: ignore[method-assign]
            replica.step([Message(MsgType.HEARTBEAT, to=1, frm=2, term=99)])
            failure = await asyncio.wait_for(node.wait_failed(), 5)
            assert "conflicts with committed" in str(failure)
            try:
                await c.put("after", "x")
            except errors.Unavailable:
                pass
            else:
                raise AssertionError("a failed replica accepted a write")
    finally:
        await node.stop()
