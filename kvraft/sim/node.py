"""A simulated replica: a RaftCore, a disk, a state machine and the Ready loop.

The disk has a durable part (hard state, log entries, the applied index of the state
machine) that survives crashes; everything else is volatile. Ready processing is
asynchronous, as in the real runtime: ``pump()`` takes a Ready when none is in flight
and the disk write completes some steps later (``_persisted``); only then are the
Ready's messages sent, its committed entries applied and ``advance()`` called. In the
meantime the core keeps being ticked, stepped and proposed to.

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
    HardState,
    InitialState,
    Message,
    RaftCore,
    Ready,
)
from kvraft.raft.types import ReadState

if TYPE_CHECKING:
    from kvraft.sim.cluster import Cluster

CoreFactory = Callable[[Config, random.Random, InitialState], RaftCore]


class Disk:
    """The durable state of one replica."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        """``entries[k]`` has index k + 1 (no snapshots are simulated)."""
        self.applied = 0
        """The state machine is durable up to this index."""
        self.writes = 0

    def last_index(self) -> int:
        return len(self.entries)

    def entry(self, index: int) -> Entry | None:
        return self.entries[index - 1] if 0 < index <= len(self.entries) else None


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
        rng = random.Random(self.host.rng.getrandbits(64))
        state = InitialState(conf=self.conf, hard_state=d.hard_state,
                             entries=list(d.entries), applied=d.applied)
        self.core = self.core_factory(self.raft_cfg, rng, state)
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
        del self.sm[self.disk.applied:]
        self.sm_payloads = {e.data: e.index for e in self.sm if e.data}

    # --- inputs -----------------------------------------------------------------------

    def tick(self) -> None:
        self.the_core().tick()
        self._after_op()

    def receive(self, m: Message) -> None:
        self.the_core().step(m)
        self._after_op()

    def propose(self, data: bytes) -> tuple[int, int]:
        try:
            return self.the_core().propose(data)
        finally:
            self._after_op()

    def read_index(self, ctx: int) -> None:
        try:
            self.the_core().read_index(ctx)
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
        self.inflight = rd
        self.expect = (core.log.last_index(), core.log.last_term(),
                       HardState(core.term, core.vote))
        self.host.checker.after_ready(self, rd)
        if rd.hard_state is not None or rd.entries:
            delay = self.host.rng.randint(1, self.host.cfg.persist_delay_max)
        else:
            delay = self.host.rng.randint(0, 1)
        self.host.schedule(delay, self._persisted, self.incarnation)

    def _persisted(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.inflight is None:
            return  # the node crashed while writing: the write never happened
        rd, self.inflight = self.inflight, None
        expect, self.expect = self.expect, None
        host = self.host
        # 1-2: the durable write (hard state and entries together).
        host.checker.before_write(self, rd)
        d = self.disk
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state
        if rd.entries:
            del d.entries[rd.entries[0].index - 1:]
            d.entries.extend(rd.entries)
        d.writes += 1
        assert expect is not None
        host.checker.after_write(self, expect)
        # 3: only now may the messages leave.
        for m in rd.messages:
            host.network.send(m)
        if host.maybe_crash_after_write(self):
            return
        # 4: apply, in order, exactly once per lifetime.
        for e in rd.committed:
            host.checker.on_apply(self, e)
            self.sm.append(e)
            if e.data:
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
        self._after_op()

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
        if self.core is None:
            return f"n{self.id}: DOWN (durable term {self.disk.hard_state.term}, "\
                   f"log {self.disk.last_index()}, applied {self.disk.applied})"
        st = self.core.status()
        lead = st.leader if st.leader != NONE else "-"
        return (f"n{self.id}: {st.role.name} term {st.term} vote {st.vote} leader {lead} "
                f"commit {st.commit} applied {self.applied} last {st.last_index} "
                f"durable {self.disk.last_index()}")
