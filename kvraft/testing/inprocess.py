"""A one-node cluster assembled in-process: a real aiohttp server on 127.0.0.1 and real
SQLite files, hosting the controller and data group 1 (which owns every key)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft.bootstrap import bootstrap, wait_groups_at
from kvraft.config import NodeSettings
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
