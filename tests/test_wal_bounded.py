"""Under steady writes the WAL of raft.db and of state.db stays bounded: each is
checkpointed by its own writer between two writes, so the checkpoint catches up and the
next write starts the WAL over (a checkpoint racing the writer from another thread
rarely catches up, and the WAL then grows with every write)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kvraft import AsyncClient
from kvraft.config import NodeSettings, ReplicaSettings, SnapshotSettings
from kvraft.raft.types import Entry
from kvraft.storage.statedb import StateStore
from kvraft.testing.inprocess import single_node


async def test_wal_files_stay_bounded_under_steady_writes(tmp_path: Path) -> None:
    node = await single_node(tmp_path / "n1", NodeSettings(replica=ReplicaSettings(
        checkpoint_entries=25, snapshot=SnapshotSettings(entries=1_000_000))))
    addr = node.cfg.listen
    try:
        group = tmp_path / "n1" / "group-1"
        sizes: list[tuple[int, int]] = []
        async with AsyncClient([addr], timeout_s=30.0) as c:
            async def writer(w: int) -> None:
                for i in range(25):
                    await c.put(f"w{w}-{i}", "v" * 200)

            for _ in range(6):  # 6 x 800 writes, 32 in flight: never a quiet moment
                await asyncio.gather(*(writer(w) for w in range(32)))
                sizes.append(((group / "raft.db-wal").stat().st_size,
                              (group / "state.db-wal").stat().st_size))
        print("WAL sizes (raft.db, state.db) after each 800 writes:", sizes)
        # Bounded: with the WAL restarting after each checkpoint the files stay near one
        # checkpoint interval of frames (about 0.2 and 1 MiB here); checkpoints that
        # never caught up left 3 and 29 MiB after these 4,800 writes.
        assert sizes[-1][0] < 1 << 20 and sizes[-1][1] < 4 << 20, sizes
        assert not node.replicas[1].failed.done()
        assert node.replicas[1].applied_index >= 4800
    finally:
        await node.stop()


async def test_no_apply_runs_beside_a_state_checkpoint(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The state.db checkpoint uses the writer's connection, so while it runs every
    apply waits behind it (an inline apply beside it once failed a commit with
    'SQL statements in progress'). The checkpoint is held open here until the test has
    seen later writes commit but not apply."""
    hold = threading.Event()  # set once the node is up: bootstrap is not held
    in_checkpoint = threading.Event()
    release = threading.Event()
    beside: list[int] = []
    loop = asyncio.get_running_loop()
    entered: asyncio.Future[None] = loop.create_future()
    checkpoint, apply_batch = StateStore.checkpoint, StateStore.apply_batch

    def signal_entered() -> None:
        if not entered.done():
            entered.set_result(None)

    def held_checkpoint(self: StateStore) -> None:
        if not hold.is_set() or release.is_set():
            checkpoint(self)
            return
        in_checkpoint.set()
        loop.call_soon_threadsafe(signal_entered)
        release.wait(60)
        checkpoint(self)
        in_checkpoint.clear()

    def watched_apply(self: StateStore, entries: Sequence[Entry]) -> list[Any]:
        if in_checkpoint.is_set():
            beside.extend(e.index for e in entries)
        return apply_batch(self, entries)

    monkeypatch.setattr(StateStore, "checkpoint", held_checkpoint)
    monkeypatch.setattr(StateStore, "apply_batch", watched_apply)
    node = await single_node(tmp_path / "n1",
                             NodeSettings(replica=ReplicaSettings(checkpoint_entries=5)))
    addr = node.cfg.listen
    try:
        r = node.replicas[1]
        hold.set()
        async with AsyncClient([addr], timeout_s=60.0) as c:
            i = 0
            later: list[asyncio.Future[None]] = []
            while not entered.done():  # write until a checkpoint is running
                put = asyncio.ensure_future(c.put(f"a{i}", "v"))
                await asyncio.wait([put, entered], return_when=asyncio.FIRST_COMPLETED)
                if not put.done():
                    later.append(put)  # it waits behind the checkpoint
                i += 1
            assert r.core is not None
            target = r.core.log.last_index() + 3
            after = [asyncio.ensure_future(c.put(f"b{j}", "v")) for j in range(3)]
            deadline = asyncio.get_running_loop().time() + 30
            while r.core.log.committed < target:  # committed while the checkpoint is held
                assert asyncio.get_running_loop().time() < deadline, r.status()
                await r._after_ready(deadline)  # wakes when the replica handles a Ready
            assert r.applied_index < target and not any(t.done() for t in after)
            release.set()
            await asyncio.gather(*later, *after)
        assert beside == [] and not r.failed.done()
        assert r.applied_index >= target
    finally:
        release.set()
        await node.stop()
