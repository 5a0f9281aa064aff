"""Under steady writes the WAL of raft.db and of state.db stays bounded: each is
checkpointed by its own writer between two writes, so the checkpoint catches up and the
next write starts the WAL over (a checkpoint racing the writer from another thread
rarely catches up, and the WAL then grows with every write)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft import AsyncClient
from kvraft.bootstrap import bootstrap, wait_groups_at
from kvraft.config import NodeSettings, ReplicaSettings, SnapshotSettings
from kvraft.runtime.node import Node, NodeConfig
from kvraft.testing import free_port


async def test_wal_files_stay_bounded_under_steady_writes(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    settings = NodeSettings(replica=ReplicaSettings(
        checkpoint_entries=100, snapshot=SnapshotSettings(entries=1_000_000)))
    node = Node(NodeConfig(node_id=1, listen=addr, peers={1: addr}, data_dir=tmp_path / "n1",
                           secret="s", groups=(0, 1), settings=settings))
    await node.start()
    try:
        num = await asyncio.to_thread(bootstrap, [addr], "s", {1: {1: addr}})
        await asyncio.to_thread(wait_groups_at, [addr], [1], num)
        group = tmp_path / "n1" / "group-1"
        sizes: list[tuple[int, int]] = []
        async with AsyncClient([addr], timeout_s=30.0) as c:
            async def writer(w: int) -> None:
                for i in range(100):
                    await c.put(f"w{w}-{i}", "v" * 200)

            for _ in range(6):  # 6 x 800 writes, 8 in flight: never a quiet moment
                await asyncio.gather(*(writer(w) for w in range(8)))
                sizes.append(((group / "raft.db-wal").stat().st_size,
                              (group / "state.db-wal").stat().st_size))
        print("WAL sizes (raft.db, state.db) after each 800 writes:", sizes)
        # bounded: the last is no larger than the largest seen after the first rounds
        assert sizes[-1][0] <= max(s[0] for s in sizes[:3]), sizes
        assert sizes[-1][1] <= max(s[1] for s in sizes[:3]), sizes
        assert node.replicas[1].applied_index >= 4800
    finally:
        await node.stop()
