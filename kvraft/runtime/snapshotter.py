"""Snapshots of one replica: taking them, compacting the log, streaming, installing.

Ordering rules (DESIGN.md):

- Taking: the snapshot file is durable (fsynced, renamed, sidecar written) before
  raft.db forgets any entry, and the core drops entries only after raft.db did. The
  log keeps ``catchup_entries`` entries below the snapshot for slightly lagging
  followers.
- Installing a snapshot received from the leader: the file was verified (size,
  sha256, contents at the announced index) and adopted before the core ever saw the
  SNAP message; raft.db then records the snapshot and drops its log; then state.db is
  replaced, after the apply pipeline has drained. A crash anywhere leaves raft.db's log
  starting beyond state.db's applied index, which ``recover_state`` repairs on restart
  by installing the same snapshot file again.

Snapshots run on their own thread, so the replica keeps serving while one is taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kvraft import errors
from kvraft.config import SnapshotSettings
from kvraft.raft import Message, RaftCore, SnapshotMeta
from kvraft.storage import snapshots as snapfiles
from kvraft.storage.ports import MachineStore, OpenStore
from kvraft.storage.raftlog import LoadedLog, RaftLogStore
from kvraft.storage.snapshots import LocalSnapshot
from kvraft.transport.snapshot_stream import IncomingSnapshot

log = logging.getLogger("kvraft.snapshot")

StreamSnapshot = Callable[[int, int, Message, LocalSnapshot], Awaitable[None]]
"""(peer, group, SNAP message, file) -> completes once the peer accepted the file."""


@dataclass(slots=True)
class SnapshotStats:
    taken: int = 0
    installed: int = 0
    sent: int = 0
    send_failures: int = 0
    last_take_s: float = 0.0
    max_take_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InstallItem:
    """Put on the apply queue: replace state.db once earlier batches are applied."""

    snap: LocalSnapshot
    done: asyncio.Future[None]


class SnapshotHost(Protocol):
    """What the Snapshotter needs of the replica it serves (its ports, not the object)."""

    dir: Path
    group_id: int
    core: RaftCore | None
    state: MachineStore
    raftlog: RaftLogStore
    log_io: ThreadPoolExecutor
    applied_index: int
    open_store: OpenStore

    def step(self, msgs: list[Message]) -> None: ...
    def wake(self) -> None: ...
    def enqueue_install(self, item: InstallItem) -> None: ...


def recover_state(group_dir: Path, loaded: LoadedLog, state: MachineStore,
                  open_store: OpenStore) -> MachineStore:
    """On start: if state.db is behind the log's first index, install the snapshot."""
    applied, _ = state.applied()
    if applied >= loaded.log_start[0]:
        return state
    want = loaded.snapshot
    local = None
    if want is not None:
        local = next((s for s in snapfiles.list_snapshots(group_dir / "snapshots")
                      if (s.index, s.term) == (want.index, want.term)), None)
    if local is None or want is None:
        raise errors.ServerError(
            f"{group_dir}: state.db (applied {applied}) is behind the log, which starts at "
            f"{loaded.log_start[0] + 1}, and the snapshot to repair it is missing — restore "
            "this replica from S3 (kvraft restore)")
    snapfiles.verify(local)
    log.warning("%s: state.db at %d is behind the log; installing snapshot %d", group_dir,
                applied, local.index)
    path = state.path
    state.close()
    snapfiles.install_state(local, path)
    return open_store(path)


class MembershipUnknown(Exception):
    """A snapshot now could not record the membership at its index (try again later)."""


class Snapshotter:
    def __init__(self, replica: SnapshotHost, settings: SnapshotSettings,
                 stream: StreamSnapshot | None) -> None:
        self.r = replica
        self.settings = settings
        self.stream = stream
        self.dir = replica.dir / "snapshots"
        self.stats = SnapshotStats()
        self.last_index = 0
        self.taking = False
        self.bytes_since = 0
        """Bytes of entry data applied since the last snapshot was started."""
        self.streaming: set[int] = set()
        self._lock = asyncio.Lock()
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"snap-g{replica.group_id}")
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- taking ----------------------------------------------------------------------

    def maybe_take(self, applied_bytes: int = 0) -> None:
        """Snapshot once ``entries`` entries, or ``log_bytes`` bytes of entry data, were
        applied since the last snapshot (the byte bound keeps a log of large entries,
        such as range chunks, from growing in memory)."""
        self.bytes_since += applied_bytes
        if self.taking:
            return
        n, b = self.settings.entries, self.settings.log_bytes
        if (n > 0 and self.r.applied_index - self.last_index >= n) or (
                b > 0 and self.bytes_since >= b):
            self.taking = True
            self._spawn(self._take_logged())

    async def _take_logged(self) -> None:
        try:
            await self.take()
        except MembershipUnknown as e:
            log.info("%s", e)
        except Exception as e:
            log.error("group %d: snapshot failed: %s", self.r.group_id, e, exc_info=True)

    async def take(self) -> LocalSnapshot:
        """Snapshot state.db now, then compact raft.db and the core's log."""
        self.taking = True
        try:
            async with self._lock:
                return await self._take_locked()
        finally:
            self.taking = False

    async def _take_locked(self) -> LocalSnapshot:
        r = self.r
        core = r.core
        assert core is not None
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        history = core.conf_history()
        if not history.known(r.applied_index):
            raise MembershipUnknown(
                f"group {r.group_id}: the membership at index {r.applied_index} is not known "
                "here yet (a snapshot install is pending, or this node joined and holds no "
                "membership entry yet); no snapshot now")
        snap = await loop.run_in_executor(self._io, snapfiles.create_snapshot,
                                          r.state.path, self.dir, history)
        # The copy's index is known only now, and entries (membership changes among
        # them) kept being applied meanwhile: take the membership at that index from the
        # log as it is now (committed entries are never truncated).
        now = core.conf_history()
        if not now.known(snap.index):  # a newer snapshot replaced the log meanwhile
            raise MembershipUnknown(f"group {r.group_id}: the membership at index "
                                    f"{snap.index} is no longer known here; the copy is not "
                                    "used (pruning removes it)")
        if now(snap.index) != snap.conf:
            snap = await loop.run_in_executor(self._io, snapfiles.with_conf, snap,
                                              now(snap.index))
        elapsed = time.monotonic() - t0
        self.stats.taken += 1
        self.stats.last_take_s = elapsed
        self.stats.max_take_s = max(self.stats.max_take_s, elapsed)
        self.bytes_since = 0
        if snap.index > core.log.snapshot_index:
            start = max(core.log.snapshot_index, snap.index - self.settings.catchup_entries,
                        self._catchup_start_by_bytes(core, snap.index))
            term = core.log.term(start)
            assert term is not None
            meta = SnapshotMeta(snap.index, snap.term, snap.conf)
            await loop.run_in_executor(r.log_io, r.raftlog.compact, meta, (start, term))
            core.set_latest_snapshot(meta)
            if start > core.log.snapshot_index:
                core.compact(start)
        self.last_index = max(self.last_index, snap.index)
        recorded = core.latest_snapshot
        await loop.run_in_executor(self._io, snapfiles.prune, self.dir, self.settings.keep,
                                   (recorded.index, recorded.term) if recorded else None)
        log.info("group %d: snapshot at %d (%d bytes) in %.2fs", r.group_id, snap.index,
                 snap.size, elapsed)
        return snap

    def _catchup_start_by_bytes(self, core: RaftCore, index: int) -> int:
        """The lowest index such that the entries kept below ``index`` hold at most
        ``catchup_bytes`` bytes of data."""
        limit = self.settings.catchup_bytes
        log_ = core.log
        base = log_.snapshot_index + 1
        i, total = min(index, log_.last_index()), 0
        while i >= base:
            total += len(log_.entries[i - base].data)
            if total > limit:
                return i
            i -= 1
        return log_.snapshot_index

    async def latest_or_take(self) -> LocalSnapshot:
        """The newest local snapshot if it covers everything applied, else a new one."""
        snaps = snapfiles.list_snapshots(self.dir)
        if snaps and snaps[-1].index >= self.r.applied_index:
            return snaps[-1]
        return await self.take()

    # --- sending (leader) ---------------------------------------------------------------

    def send(self, m: Message) -> None:
        """Stream the snapshot a SNAP message refers to; report the outcome to the core."""
        if m.to in self.streaming or self.stream is None or m.snapshot is None:
            return
        self.streaming.add(m.to)
        self._spawn(self._send(m))

    async def _send(self, m: Message) -> None:
        r = self.r
        ok = False
        try:
            meta = m.snapshot
            assert meta is not None and self.stream is not None
            local = next((s for s in snapfiles.list_snapshots(self.dir)
                          if (s.index, s.term) == (meta.index, meta.term)), None)
            if local is None:
                raise FileNotFoundError(f"snapshot {meta.index} is no longer on disk")
            log.info("group %d: streaming snapshot %d (%d bytes) to node %d", r.group_id,
                     local.index, local.size, m.to)
            await self.stream(m.to, r.group_id, m, local)
            ok = True
            self.stats.sent += 1
        except Exception as e:
            self.stats.send_failures += 1
            log.warning("group %d: snapshot to node %d failed: %s", r.group_id, m.to, e)
        finally:
            self.streaming.discard(m.to)
            if r.core is not None:
                r.core.report_snapshot(m.to, ok)
                r.wake()

    # --- receiving and installing (follower) --------------------------------------------

    async def receive(self, inc: IncomingSnapshot) -> None:
        """A verified snapshot file arrived: adopt it, then let the core decide."""
        r = self.r
        meta = inc.message.snapshot
        core = r.core
        if meta is None or core is None:
            return
        if meta.index > core.log.committed:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                self._io, lambda: snapfiles.adopt_snapshot(
                    inc.path, self.dir, index=meta.index, term=meta.term, conf=meta.conf,
                    sha256=inc.sha256, size=inc.size))
        r.step([inc.message])

    async def install(self, meta: SnapshotMeta) -> None:
        """Make the snapshot the core restored to durable: raft.db, then state.db."""
        r = self.r
        async with self._lock:
            local = next((s for s in snapfiles.list_snapshots(self.dir)
                          if (s.index, s.term) == (meta.index, meta.term)), None)
            if local is None:
                raise errors.ServerError(f"snapshot {meta.index}/{meta.term} to install is "
                                         "missing")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(r.log_io, lambda: r.raftlog.compact(
                meta, (meta.index, meta.term), discard_log=True))
            done: asyncio.Future[None] = loop.create_future()
            r.enqueue_install(InstallItem(local, done))
            await done
            self.last_index = meta.index
            self.stats.installed += 1
            log.info("group %d: installed snapshot %d from the leader", r.group_id, meta.index)

    def install_sync(self, item: InstallItem) -> MachineStore:
        """On the state thread: replace state.db by the snapshot; returns the new store."""
        r = self.r
        path = r.state.path
        r.state.close()
        snapfiles.install_state(item.snap, path)
        return r.open_store(path)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._io.shutdown(wait=True)

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"last_index": self.last_index, "taken": s.taken, "installed": s.installed,
                "sent": s.sent, "send_failures": s.send_failures,
                "last_take_s": round(s.last_take_s, 3), "max_take_s": round(s.max_take_s, 3),
                "streaming_to": sorted(self.streaming)}
