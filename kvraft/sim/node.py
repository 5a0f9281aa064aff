"""A simulated replica: a RaftCore, a disk, a state machine and the Ready loop.

The disk has a durable part (hard state, the log after its compaction point, the
newest snapshot recorded with the log, snapshot files, the applied index of the state
machine) that survives crashes; everything else is volatile. Ready processing is
asynchronous, as in the real runtime: ``pump()`` takes a Ready when none is in flight
and the disk write completes some steps later (``_persisted``); only then is a
snapshot installed, the Ready's entries written, its messages sent (except a leader's
appends, heartbeats, snapshots and TimeoutNow, which leave at ``pump`` before the write
is durable, exactly as in the runtime), its committed
entries applied and ``advance()`` called. In the meantime the core keeps being ticked,
stepped and proposed to.

Snapshots follow ``kvraft/runtime/snapshotter.py``: every ``snapshot_every`` applied
entries a node copies its state machine (the applied prefix) into a snapshot file,
then records it with the log, which it compacts to ``max(compaction point, index -
snapshot_margin)``, then calls ``set_latest_snapshot`` and ``compact`` on the core. A
follower receives a snapshot file before its core sees the SNAP message; when a Ready
carries ``snapshot`` it records the snapshot with the log (dropping the log), then
replaces its state machine (a crash in between is repaired on restart).

A crash discards the in-flight write and all volatile state; a restart rebuilds the
core from the durable part alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvraft.raft import (
    NONE,
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    RaftCore,
    Ready,
    SnapshotMeta,
)
from kvraft.raft.types import ReadState, early_messages

if TYPE_CHECKING:
    from kvraft.sim.cluster import Cluster

CoreFactory = Callable[[Config, random.Random, InitialState], RaftCore]

SnapData = tuple[Entry, ...]
"""A state-machine snapshot: the applied entries 1..index (``data[k]`` is index k + 1)."""


def is_command(e: Entry) -> bool:
    """A client's command (unique payload), not a no-op or a membership entry."""
    return bool(e.data) and e.kind == EntryKind.NORMAL


class Disk:
    """The durable state of one replica."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.log_start: tuple[int, int] = (0, 0)
        """(index, term) of the compaction point: the entry just before ``entries[0]``."""
        self.entries: list[Entry] = []
        """``entries[k]`` has index ``log_start[0] + 1 + k``."""
        self.snapshot: SnapshotMeta | None = None
        """The newest snapshot recorded with the log (at or above ``log_start``)."""
        self.files: dict[tuple[int, int], SnapData] = {}
        """Snapshot files by (index, term): taken here or received from a leader."""
        self.applied = 0
        """The state machine is durable up to this index."""
        self.writes = 0

    def last_index(self) -> int:
        return self.log_start[0] + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.log_start[1]

    def entry(self, index: int) -> Entry | None:
        k = index - self.log_start[0] - 1
        return self.entries[k] if 0 <= k < len(self.entries) else None

    def term(self, index: int) -> int | None:
        if index == self.log_start[0]:
            return self.log_start[1]
        e = self.entry(index)
        return e.term if e is not None else None

    def describe_log(self) -> str:
        last = self.last_index()
        return f"{self.log_start[0]}..{last}" if self.log_start[0] else str(last)

    def write(self, entries: list[Entry]) -> None:
        """Delete every stored entry from ``entries[0].index`` on, then store ``entries``."""
        del self.entries[max(0, entries[0].index - self.log_start[0] - 1):]
        self.entries.extend(entries)

    def compact(self, snap: SnapshotMeta, start: tuple[int, int]) -> None:
        """Record ``snap`` and drop the log up to ``start`` (all of it if ``start`` is
        not an entry of the log, as when an installed snapshot replaces the log)."""
        if self.term(start[0]) == start[1] and start[0] >= self.log_start[0]:
            del self.entries[: start[0] - self.log_start[0]]
        else:
            self.entries = []
        self.log_start = start
        self.snapshot = snap

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` snapshot files (done after each take), and
        never the file of the snapshot recorded with the log: a restart whose state
        machine is behind the log start (a lost tail of applies) needs exactly that one.
        """
        rec = (self.snapshot.index, self.snapshot.term) if self.snapshot else None
        for key in sorted(self.files)[: max(0, len(self.files) - keep)]:
            if key != rec:
                del self.files[key]


class SimNode:
    def __init__(self, node_id: int, raft_cfg: Config, conf: ConfState, host: Cluster,
                 core_factory: CoreFactory) -> None:
        self.id = node_id
        self.raft_cfg = raft_cfg
        self.conf = conf
        self.host = host
        self.core_factory = core_factory
        self.disk = Disk()
        self.core: RaftCore | None = None
        self.incarnation = 0
        self.inflight: Ready | None = None
        self.expect: tuple[int, int, HardState] | None = None
        """(last index, last term, hard state) of the core when the in-flight Ready was taken."""
        self.sm: list[Entry] = []
        """The state machine: ``sm[k]`` is the entry applied at index k + 1."""
        self.sm_payloads: dict[bytes, int] = {}
        self.waiting_reads: list[ReadState] = []
        self.tick_phase = 0
        self.snap_last = 0
        """Index of the newest snapshot taken or installed (the runtime's ``last_index``)."""
        self.taking = False
        self.streaming: set[int] = set()
        """Peers a snapshot is being streamed to (volatile)."""
        self.disk_delay: tuple[int, int] | None = None
        """(min, max) steps of this node's writes instead of 1..persist_delay_max: a slow
        disk, for scripted scenarios."""
        self.retired = False
        """Shut down for good (removed from the group): never restarted."""
        self.stepping: Message | None = None
        """The message being stepped (the checkers read the vote that wins an election)."""

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def applied(self) -> int:
        return len(self.sm)

    def the_core(self) -> RaftCore:
        if self.core is None:
            raise RuntimeError(f"node {self.id} is down")
        return self.core

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Boot (or reboot) from the durable state only."""
        d = self.disk
        if d.applied < d.log_start[0]:
            # The state machine is behind the log (a crash during an install, or a
            # compaction beyond the durable applied index): install the recorded snapshot.
            snap = d.snapshot
            data = d.files.get((snap.index, snap.term)) if snap is not None else None
            if snap is None or data is None:
                why = (f"n{self.id}: state machine at {d.applied} is behind the log start "
                       f"{d.log_start[0]} and the snapshot to repair it is missing "
                       f"(recorded: {snap})")
                self.host.checker.fail("persistence", why)
                raise RuntimeError(why)  # the check is disabled, but this cannot go on
            self.host.trace(f"n{self.id} restarts behind its log: installs snapshot "
                            f"{snap.index}@t{snap.term}")
            self.host.count("snap-recover")
            self._replace_state_machine(snap, data)
        rng = random.Random(self.host.rng.getrandbits(64))
        # The membership at the snapshot (the bootstrap one without a snapshot); the core
        # reads the CONF entries after it from the log.
        conf = d.snapshot.conf if d.snapshot is not None else self.conf
        state = InitialState(conf=conf, hard_state=d.hard_state, snapshot=d.snapshot,
                             entries=list(d.entries), applied=d.applied,
                             log_start=d.log_start)
        self.core = self.core_factory(self.raft_cfg, rng, state)
        self.snap_last = d.snapshot.index if d.snapshot is not None else 0
        self.incarnation += 1
        self.host.checker.on_restart(self)
        self.host.checker.after_op(self)

    def crash(self) -> None:
        """Lose everything volatile, including the unfinished disk write."""
        self.core = None
        self.inflight = None
        self.expect = None
        self.incarnation += 1
        self.waiting_reads = []
        self.taking = False
        self.streaming = set()
        del self.sm[self.disk.applied:]
        self.sm_payloads = {e.data: e.index for e in self.sm if is_command(e)}

    # --- inputs -----------------------------------------------------------------------

    def tick(self) -> None:
        self.the_core().tick()
        self._after_op()

    def receive(self, m: Message) -> None:
        self.stepping = m
        try:
            self.the_core().step(m)
            self._after_op()
        finally:
            self.stepping = None

    def receive_snapshot(self, m: Message, data: SnapData) -> None:
        """A snapshot stream completed: keep the file (if it is news), then step SNAP."""
        meta = m.snapshot
        assert meta is not None
        if meta.index > self.the_core().log.committed:
            self.disk.files[(meta.index, meta.term)] = data
        self.receive(m)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.the_core().report_snapshot(peer, ok)
        self._after_op()

    def propose(self, data: bytes) -> tuple[int, int]:
        try:
            return self.the_core().propose(data)
        finally:
            self._after_op()

    def propose_conf(self, conf: ConfState) -> tuple[int, int]:
        try:
            return self.the_core().propose_conf(conf)
        finally:
            self._after_op()

    def read_index(self, ctx: int, *, forward: bool = False) -> None:
        try:
            self.the_core().read_index(ctx, forward=forward)
        finally:
            self._after_op()

    def transfer_leadership(self, target: int) -> None:
        try:
            self.the_core().transfer_leadership(target)
        finally:
            self._after_op()

    def _after_op(self) -> None:
        self.host.checker.after_op(self)
        self.pump()

    # --- the Ready loop -----------------------------------------------------------------

    def pump(self) -> None:
        """Take the next Ready if none is being persisted and there is work."""
        core = self.core
        if core is None or self.inflight is not None or not core.has_ready():
            return
        rd = core.ready()
        # As the runtime does: a leader's appends, heartbeats, snapshots and TimeoutNow
        # leave before its own write is durable (thesis 10.2.1); the rest after it.
        early, late = early_messages(rd, core.role)
        rd.messages = late
        for m in early:
            self.host.send(self, m)
        self.inflight = rd
        self.expect = (core.log.last_index(), core.log.last_term(),
                       HardState(core.term, core.vote))
        self.host.checker.after_ready(self, rd)
        if rd.hard_state is not None or rd.entries or rd.snapshot is not None:
            lo, hi = self.disk_delay or (1, self.host.cfg.persist_delay_max)
            delay = self.host.rng.randint(lo, hi)
        else:
            delay = self.host.rng.randint(0, 1)
        self.host.schedule(delay, self._persisted, self.incarnation)

    def _persisted(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.inflight is None:
            return  # the node crashed while writing: the write never happened
        rd, self.inflight = self.inflight, None
        expect, self.expect = self.expect, None
        host = self.host
        # 1: install the snapshot (recorded with the log, then the state machine).
        if rd.snapshot is not None and not self._install(rd.snapshot):
            return  # crashed half-way
        # 2: the durable write (hard state and entries together).
        host.checker.before_write(self, rd)
        d = self.disk
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state
        if rd.entries:
            d.write(rd.entries)
        d.writes += 1
        assert expect is not None
        host.checker.after_write(self, expect)
        # 3: only now may the messages leave.
        for m in rd.messages:
            host.send(self, m)
        if host.maybe_crash_after_write(self):
            return
        # 4: apply, in order, exactly once per lifetime.
        for e in rd.committed:
            host.checker.on_apply(self, e)
            self.sm.append(e)
            if is_command(e):
                self.sm_payloads[e.data] = e.index
            host.client.on_apply(self, e)
        if rd.committed and host.rng.random() < host.cfg.apply_sync:
            d.applied = len(self.sm)
        # 5: reads.
        for rs in rd.read_states:
            host.client.on_read_state(self, rs)
            self.waiting_reads.append(rs)
        for ctx in rd.dropped_reads:
            host.client.on_read_dropped(self, ctx)
        if rd.soft_state is not None:
            host.on_soft_state(self, rd.soft_state)
        # 6: advance.
        core = self.the_core()
        core.advance(rd)
        self.serve_reads()
        if rd.committed:
            self.maybe_take_snapshot()
        self._after_op()

    # --- snapshots ----------------------------------------------------------------------

    def _install(self, snap: SnapshotMeta) -> bool:
        """Install a snapshot the core restored to; False if the node crashed meanwhile."""
        host = self.host
        d = self.disk
        data = d.files.get((snap.index, snap.term))
        if data is None:
            why = (f"n{self.id} must install snapshot {snap.index}@t{snap.term}, which it "
                   f"never received (files: {sorted(d.files)})")
            host.checker.fail("persistence", why)
            raise RuntimeError(why)  # the check is disabled, but this cannot go on
        host.checker.on_install(self, snap, data)
        d.compact(snap, (snap.index, snap.term))
        host.trace(f"n{self.id} installs snapshot {snap.index}@t{snap.term} "
                   f"(state machine was at {self.applied})")
        host.count("snap-install")
        if host.maybe_crash_during_install(self):
            return False
        self._replace_state_machine(snap, data)
        host.client.on_install(self, snap.index)
        return True

    def _replace_state_machine(self, snap: SnapshotMeta, data: SnapData) -> None:
        self.sm = list(data)
        self.sm_payloads = {e.data: e.index for e in data if is_command(e)}
        self.disk.applied = snap.index
        self.snap_last = max(self.snap_last, snap.index)

    def maybe_take_snapshot(self) -> None:
        """Every ``snapshot_every`` applied entries: snapshot the state machine, then
        record it and compact the log once the (simulated) snapshot write is done."""
        host = self.host
        every = host.cfg.snapshot_every
        if every <= 0 or self.taking or self.applied - self.snap_last < every:
            return
        core = self.the_core()
        # The membership in force at the snapshot's index, not the newest one in the log
        # (an uncommitted change above it may still be truncated).
        if self.applied < core.log.snapshot_index:
            return  # the log was replaced by a newer snapshot, installed next
        conf = core.conf_at(self.applied)
        if not conf.voters:
            # A node that joined and received the log from its start does not know the
            # membership below the first membership entry it holds (its own is empty):
            # it snapshots once it has applied one.
            return
        meta = SnapshotMeta(self.applied, self.sm[-1].term, conf)
        data: SnapData = tuple(self.sm)
        host.checker.on_snapshot_taken(self, meta, data)
        self.taking = True
        host.schedule(host.rng.randint(0, host.cfg.snapshot_take_max), self._snapshot_taken,
                      self.incarnation, meta, data)

    def _snapshot_taken(self, incarnation: int, meta: SnapshotMeta, data: SnapData) -> None:
        if incarnation != self.incarnation:
            return  # crashed while taking it
        self.taking = False
        core = self.the_core()
        host = self.host
        d = self.disk
        d.files[(meta.index, meta.term)] = data
        log = core.log
        if meta.index > log.snapshot_index:
            start = max(log.snapshot_index, meta.index - host.cfg.snapshot_margin)
            term = log.term(start)
            assert term is not None
            d.compact(meta, (start, term))
            core.set_latest_snapshot(meta)
            if start > log.snapshot_index:
                core.compact(start)
            host.count("snap-take")
            host.trace(f"n{self.id} snapshot at {meta.index}@t{meta.term}, log compacted to "
                       f"{start}", level=2)
        self.snap_last = max(self.snap_last, meta.index)
        d.prune(host.cfg.snapshot_keep)
        self._after_op()

    # --- reads --------------------------------------------------------------------------

    def serve_reads(self) -> None:
        if not self.waiting_reads:
            return
        keep = []
        for rs in self.waiting_reads:
            if rs.index <= self.applied:
                self.host.client.serve_read(self, rs)
            else:
                keep.append(rs)
        self.waiting_reads = keep

    def describe(self) -> str:
        d = self.disk
        if self.core is None:
            return (f"n{self.id}: {'RETIRED' if self.retired else 'DOWN'} (durable term {d.hard_state.term}, "
                    f"log {d.describe_log()}, applied {d.applied})")
        st = self.core.status()
        lead = st.leader if st.leader != NONE else "-"
        snap = f" snap {st.snapshot_index}" if st.snapshot_index else ""
        return (f"n{self.id}: {st.role.name} term {st.term} vote {st.vote} leader {lead} "
                f"commit {st.commit} applied {self.applied} last {st.last_index}{snap} "
                f"durable {d.last_index()}")
