"""A deterministic, seeded model checker of the range-migration protocol (SHARDING.md).

No Raft here: every data group is modelled as *one* linearizable replicated state
machine, a :class:`~kvraft.kv.machine.KVStateMachine` over a
:class:`~kvraft.kv.machine.MemoryBackend` with its ``gid``, applying encoded commands
in log order. What is simulated is everything around it, driving the same pure logic
the nodes run (``kvraft.ctrler``, ``kvraft.kv.shards``, ``kvraft.kv.shardcmd``,
``kvraft.kv.machine``):

- a :class:`~kvraft.ctrler.ControllerMachine` and an operator that joins and removes
  groups (at least one stays), moves, splits and merges ranges and applies rebalance
  plans (sometimes stale ones);
- per data group a driver that decides exactly as ``kvraft/runtime/migration.py``
  does: when nothing is being pulled, take configuration ``num + 1`` (CONFIG) if the
  shard state ``can_take`` it (not while it gives back a range whose new owner has not
  confirmed the install); pull each gained interval from its previous owner in bounded
  chunks (keys, then sessions; ``export_keys``/``export_sessions`` below mirror
  ``kvraft/storage/statedb.py``) and propose CHUNK/SESSIONS; for each outgoing
  interval ask the new owner whether it ``installed`` it, then propose GC steps;
- clients with sessions (``<id>.<gid>`` as in ``kvraft/client.py``) doing put, append,
  delete and get on random keys, routing by their cached copy of the controller's
  configuration, refreshing it or retrying the same group as rule 3 says, and retrying
  the same ``(client_id, seq)`` at the new owner after ``wrong_group``;
- faults: lost fetches, queries, requests and replies, duplicated and delayed
  (re-ordered) proposals and requests, groups down for a while, crashes. A restart
  rebuilds the machine from the group's last snapshot (a deep copy of its backend)
  and replays the log entries after it.

One ``random.Random(seed)`` makes every choice, so a seed replays exactly
(``python -m kvraft.sim.shards --seed S -v``). After the faulty steps comes a quiet
period: faults, the operator and new client operations stop, every group comes back,
and every pending migration, deletion and client operation must finish.

Checks (the name appears in the failure: ``[name] seed=S step=T: ...``):

- ``exclusive-serving``: after every step, no key is served by two groups;
- ``handoff``: after every step, for every interval a group still pulls at ``N`` from a
  source that has taken ``N``, the source holds its outgoing record (rule 7: the data
  the new owner needs is never dropped before it confirmed);
- ``config-order``: a group's configuration changes only by a CONFIG entry, to
  ``num + 1``, equal to the controller's configuration of that number;
- ``persistence``: after every shard command the shard state saved in the backend
  (what a snapshot holds) equals the machine's;
- ``determinism``: a machine rebuilt from its snapshot and log equals the one that
  crashed;
- ``idempotence``: a CHUNK, SESSIONS or CONFIG entry proposed twice applies once;
- ``gc-safety``: a GC step applies only once the new owner has installed the interval;
- ``linearizable-read``: a get returns the value of the operations applied so far;
- ``exactly-once``: a live retry is never answered as already forgotten; at the end
  every acknowledged append's token appears exactly once in its key, an unknown one at
  most once, a failed one never;
- ``durability``: at the end each key's value at its owner equals the model of the
  applied operations;
- ``gc``: at the end no group holds keys outside the ranges it owns, and no pull or
  outgoing record remains;
- ``liveness``: the quiet period ends (every group at the latest configuration, every
  client operation done), and no ``stall_steps`` steps of it pass without progress.
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kvraft.ctrler.config import Configuration
from kvraft.ctrler.machine import ControllerMachine, CtrlCommand, CtrlOp
from kvraft.ctrler.rebalance import RangeSize, plan
from kvraft.kv.commands import Command, Op
from kvraft.kv.machine import KVStateMachine, MemoryBackend, Result, Status, export_session
from kvraft.kv.shardcmd import SessionRecord, ShardCommand, ShardOp
from kvraft.kv.shards import (
    KEYS,
    SESSIONS,
    Interval,
    Outgoing,
    Pull,
    ShardError,
    ShardState,
)

CHECKS = ("exclusive-serving", "handoff", "config-order", "persistence", "determinism",
          "idempotence", "gc-safety", "linearizable-read", "exactly-once", "durability", "gc",
          "liveness")

BUGS = ("serve-before-install", "skip-sessions", "drop-results", "gc-unconfirmed",
        "skip-configs", "no-gc", "never-finish", "no-cursor-check", "unsaved-chunks",
        "snapshot-without-sessions", "reclaim-unconfirmed")
"""Deliberately broken variants, to show that the checkers fire:

- ``serve-before-install``: a range is served as soon as it is gained (pulls ignored);
- ``skip-sessions``: the session transfer is skipped (one empty, final SESSIONS chunk);
- ``drop-results``: sessions move without the results of the moved keys (each client's
  ``ack_below`` arrives, its remembered results do not);
- ``gc-unconfirmed``: the old owner deletes without asking the new owner;
- ``skip-configs``: the driver takes the latest configuration, skipping numbers (and the
  shard state accepts it);
- ``no-gc``: the old owner never deletes;
- ``never-finish``: the last SESSIONS chunk is never marked last (the pull never ends);
- ``no-cursor-check``: a CHUNK is installed whatever the pull's cursor (not idempotent);
- ``unsaved-chunks``: a CHUNK entry changes the shard state without saving it;
- ``snapshot-without-sessions``: a snapshot leaves the client sessions out;
- ``reclaim-unconfirmed``: a group takes a configuration that gives back a range it
  handed off before the new owner confirmed the install (the shard state accepts it and
  the driver does not wait): its copy is deleted while the other group may still need to
  pull it.
"""


class ShardSimViolation(AssertionError):
    """A checker found a broken property."""

    def __init__(self, check: str, seed: int, step: int, message: str) -> None:
        super().__init__(f"[{check}] seed={seed} step={step}: {message}")
        self.check = check
        self.seed = seed
        self.step = step
        self.detail = message


class NotReady(Exception):
    """The source has not taken the configuration yet (``statedb.NotOwned``): retry."""


@dataclass(frozen=True, slots=True)
class ShardSimConfig:
    groups: int = 4
    """The pool of data groups: gids ``1..groups`` (each runs, joined or not)."""
    initial_groups: int = 2
    clients: int = 3
    max_inflight: int = 2
    """Concurrent operations per client (they share its sessions)."""
    letters: str = "abcdefgh"
    digits: str = "0123"
    """Keys are letter + digit; keys with an even digit only ever get appends."""
    max_ranges: int = 8
    chunk_bytes: int = 24
    session_chunk: int = 2
    gc_batch_keys: int = 2
    max_concurrent_pulls: int = 2
    snapshot_every: int = 8
    """Log entries between two snapshots of a group."""
    op_attempts_max: int = 60
    """A client gives up an operation after this many attempts (its deadline)."""

    # --- faults (probabilities per message or request) ---------------------------------
    loss: float = 0.1
    dup: float = 0.08
    delay: float = 0.08
    reply_loss: float = 0.05
    down_steps_max: int = 40

    # --- event weights -----------------------------------------------------------------
    w_client: int = 30
    w_driver: int = 20
    w_pull: int = 20
    w_gc: int = 10
    w_operator: int = 4
    w_fault: int = 2
    w_deliver: int = 5

    stall_steps: int = 2_000
    """The quiet period fails ``liveness`` after this many steps without progress..."""
    quiet_max_steps: int = 200_000
    """... or after this many steps in all."""
    gc_drain_steps: int = 3_000
    bug: str = ""
    """One of :data:`BUGS` (tests only)."""
    disabled_checks: frozenset[str] = frozenset()


def profile_for_seed(rng: random.Random, **overrides: Any) -> ShardSimConfig:
    """A per-seed mix of rates and sizes drawn from the run's generator."""
    cfg = ShardSimConfig(
        groups=rng.choice((2, 3, 4, 4, 5)),
        initial_groups=rng.choice((1, 2, 2, 3)),
        clients=rng.randint(2, 4),
        max_inflight=rng.choice((1, 2, 2, 3)),
        chunk_bytes=rng.choice((8, 16, 24, 64)),
        session_chunk=rng.choice((1, 2, 3, 50)),
        gc_batch_keys=rng.choice((1, 2, 5)),
        max_concurrent_pulls=rng.choice((1, 2, 2)),
        snapshot_every=rng.choice((3, 8, 20)),
        loss=rng.choice((0.0, 0.05, 0.1, 0.2)),
        dup=rng.choice((0.0, 0.05, 0.1)),
        delay=rng.choice((0.0, 0.05, 0.1)),
        reply_loss=rng.choice((0.0, 0.05, 0.1)),
        w_operator=rng.choice((2, 4, 8)),
        w_fault=rng.choice((0, 1, 2, 4)),
    )
    cfg = replace(cfg, initial_groups=min(cfg.initial_groups, cfg.groups))
    names = {f.name for f in fields(ShardSimConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown ShardSimConfig fields: {sorted(unknown)}")
    return replace(cfg, **overrides)


# --- exports of the old owner (mirrors kvraft/storage/statedb.py) -----------------------


def _check_outgoing(sh: ShardState, num: int, iv: Interval, to_gid: int) -> None:
    if sh.num < num:
        raise NotReady(f"configuration {num} not taken here yet (at {sh.num})")
    if sh.outgoing_for(num, iv, to_gid) is None:
        raise LookupError(f"interval {iv} of configuration {num} is not held for group "
                          f"{to_gid}")


def export_keys(backend: MemoryBackend, sh: ShardState, num: int, iv: Interval, to_gid: int,
                after: str | None, max_bytes: int, max_keys: int = 10_000
                ) -> tuple[list[tuple[str, str]], bool]:
    """``StateStore.export_keys`` over a MemoryBackend: (items, last)."""
    _check_outgoing(sh, num, iv, to_gid)
    lo, end = iv
    keys = sorted(k for k in backend.data
                  if (k > after if after is not None else k >= lo)
                  and (end is None or k < end))
    items: list[tuple[str, str]] = []
    size = 0
    last = True
    for k in keys:
        v = backend.data[k]
        if len(items) >= max_keys or (items and size + len(k) + len(v) > max_bytes):
            last = False
            break
        items.append((k, v))
        size += len(k) + len(v)
    return items, last


def export_sessions(backend: MemoryBackend, sh: ShardState, num: int, iv: Interval,
                    to_gid: int, after: str | None, limit: int
                    ) -> tuple[list[SessionRecord], str | None, bool]:
    """``StateStore.export_sessions`` over a MemoryBackend: (records, next_cursor, last)."""
    _check_outgoing(sh, num, iv, to_gid)
    recs: list[SessionRecord] = []
    cursor, last = after, True
    for c in sorted(c for c in backend.sessions if c > (after or "")):
        if len(recs) >= limit:
            last = False
            break
        cursor = c
        rec = export_session(c, backend.sessions[c], iv)
        if rec[2]:  # only sessions with results in the interval move, as in statedb
            recs.append(rec)
    return recs, cursor, last


# --- broken shard states (tests) ---------------------------------------------------------


class _ServeBeforeInstall(ShardState):
    __slots__ = ()

    def serving_range(self, key: str) -> Any:
        r = self.config.range_for(key)
        return r if r.gid == self.gid else None


class _SkipConfigs(ShardState):
    __slots__ = ()

    def can_take(self, new: Configuration) -> bool:
        return new.num > self.num and not self.pulls and not self.unconfirmed_reclaims(new)

    def advance(self, new: Configuration) -> Any:
        if new.num > self.num + 1 and not self.pulls:
            self.config = replace(self.config, num=new.num - 1)
        return ShardState.advance(self, new)


class _ReclaimUnconfirmed(ShardState):
    """The reclaim bug: no outgoing interval ever counts as unconfirmed, so ``advance``
    accepts a configuration giving it back early and ``can_take`` does not hold it."""

    __slots__ = ()

    def unconfirmed_reclaims(self, new: Configuration) -> list[Outgoing]:
        return []


class _UnsavedChunks(KVStateMachine):
    def _apply_shard(self, index: int, cmd: ShardCommand) -> Result:
        sh = self.shards
        if cmd.op != ShardOp.CHUNK or sh is None:
            return super()._apply_shard(index, cmd)
        try:
            self._install_chunk(sh, cmd)
        except ShardError:
            return Result(Status.STALE, num=sh.num)
        return Result(Status.OK, num=sh.num)


class _NoCursorCheck(KVStateMachine):
    def _install_chunk(self, sh: ShardState, cmd: ShardCommand) -> None:
        p = sh.pull(cmd.num, cmd.range_id, cmd.start)
        if p.phase != KEYS:
            raise ShardError("not pulling keys")
        for k, v in cmd.items:
            self.backend.put(k, v)
        p.keys += len(cmd.items)
        p.chunks += 1
        if cmd.last:
            p.phase, p.cursor = SESSIONS, None
        else:
            p.cursor = cmd.next_cursor


# --- the model -----------------------------------------------------------------------------


@dataclass(slots=True)
class PullTask:
    """A running ``ShardDriver._pull``: its copy of the pull's progress."""

    num: int
    pull: Pull


@dataclass(slots=True)
class GcTask:
    """A running ``ShardDriver._gc``: its copy of the outgoing record."""

    og: Outgoing
    confirmed: bool = False


class GroupSim:
    """One data group: its machine, its log since the last snapshot, its driver state."""

    def __init__(self, gid: int, make: Callable[[MemoryBackend, int], KVStateMachine],
                 snapshot_sessions: bool = True) -> None:
        self.gid = gid
        self.make = make
        self.snapshot_sessions = snapshot_sessions
        self.backend = MemoryBackend()
        self.machine = make(self.backend, gid)
        self.index = 0
        self.snap = copy.deepcopy(self.backend)
        self.snap_index = 0
        self.log: list[tuple[int, bytes]] = []
        self.up = True
        self.crashed = False
        self.down_until = 0
        self.pulls: dict[tuple[int, int, str], PullTask] = {}
        self.gcs: dict[tuple[int, str, str | None], GcTask] = {}
        self.configs_taken: list[int] = []

    @property
    def sh(self) -> ShardState:
        sh = self.machine.shards
        assert sh is not None
        return sh

    def apply(self, data: bytes, snapshot_every: int) -> Result:
        self.index += 1
        res = self.machine.apply(self.index, data)
        self.log.append((self.index, data))
        if len(self.log) >= snapshot_every:
            self.take_snapshot()
        return res

    def take_snapshot(self) -> None:
        self.snap = copy.deepcopy(self.backend)
        if not self.snapshot_sessions:
            self.snap.sessions = {}
        self.snap_index = self.index
        self.log = []

    def rebuild(self) -> tuple[MemoryBackend, KVStateMachine]:
        """Restore the snapshot and replay the log after it (what a restart does)."""
        b = copy.deepcopy(self.snap)
        m = self.make(b, self.gid)
        for index, data in self.log:
            m.apply(index, data)
        return b, m


@dataclass(slots=True)
class _Sess:
    """``kvraft.client._Session``."""

    client_id: str
    next_seq: int = 1
    inflight: set[int] = field(default_factory=set)

    def begin(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.inflight.add(seq)
        return seq

    def ack_below(self) -> int:
        return min(self.inflight) if self.inflight else self.next_seq


@dataclass(slots=True)
class ClientOp:
    id: int
    client: int
    kind: str
    """put, append, delete or get."""
    key: str
    value: str = ""
    started: int = 0
    route_gid: int = 0
    sess: _Sess | None = None
    seq: int = 0
    fresh: bool = False
    maybe_applied: bool = False
    applied: bool = False
    """Some machine applied it (the model applied it to the reference)."""
    outcome: str = "pending"
    """pending, ok, unknown or failed."""
    attempts: int = 0


@dataclass(slots=True)
class SimClient:
    idx: int
    base: str
    map: Configuration
    sessions: dict[int, _Sess] = field(default_factory=dict)
    ops: list[ClientOp] = field(default_factory=list)

    def session_for(self, gid: int) -> _Sess:
        s = self.sessions.get(gid)
        if s is None:
            s = self.sessions[gid] = _Sess(f"{self.base}.{gid}")
        return s


@dataclass(slots=True)
class Delayed:
    """A proposal or client request held back in the network."""

    gid: int
    shard: ShardCommand | None = None
    client: Command | None = None


@dataclass(slots=True)
class Report:
    seed: int
    steps: int
    ok: bool = True
    check: str = ""
    error: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    final_num: int = 0
    quiet_steps: int = 0
    seconds: float = 0.0
    state: str = ""

    def summary(self) -> str:
        c = self.counts
        keys = ("configs", "config-applies", "chunks", "session-chunks", "gc-steps", "stale",
                "acked-put", "acked-append", "acked-delete", "acked-get", "unknown", "failed",
                "wrong-group", "session-expired", "not-ready", "held", "crash", "down", "lost",
                "dup", "delayed", "ctrl-rejected", "plan-dropped")
        return (f"final_num={self.final_num} quiet_steps={self.quiet_steps} "
                + " ".join(f"{k}={c.get(k, 0)}" for k in keys))


_TOKEN = re.compile(r"\[(\d+)\]")


class ShardWorld:
    """The whole model; :meth:`run` runs it. Driven by hand in tests."""

    def __init__(self, seed: int, cfg: ShardSimConfig, *, rng: random.Random | None = None,
                 verbose: int = 0, out: Callable[[str], None] = print) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = rng if rng is not None else random.Random(seed)
        self.verbose = verbose
        self.out = out
        if cfg.bug and cfg.bug not in BUGS:
            raise ValueError(f"unknown bug {cfg.bug!r}; one of {BUGS}")
        self.step_no = 0
        self.quiet = False
        self.counts: Counter[str] = Counter()
        self.ctrl = ControllerMachine()
        self.groups: dict[int, GroupSim] = {
            g: GroupSim(g, self._make_machine, cfg.bug != "snapshot-without-sessions")
            for g in range(1, cfg.groups + 1)}
        self.keys = [a + d for a in cfg.letters for d in cfg.digits]
        self.append_only = {k for k in self.keys if cfg.digits.index(k[1]) % 2 == 0}
        self.split_points = sorted(set(self.keys) | set(cfg.letters)
                                   | {a + "1x" for a in cfg.letters})
        self.reference: dict[str, str] = {}
        self.op_of: dict[tuple[str, int], ClientOp] = {}
        self.token_op: dict[str, ClientOp] = {}
        self.ops_done: list[ClientOp] = []
        self.delayed: list[Delayed] = []
        self.stale_plans: list[tuple[tuple[int, int, int], ...]] = []
        self.next_op = 0
        self.clients = [SimClient(i, self._new_client_id(), self.ctrl.latest())
                        for i in range(cfg.clients)]

    # --- plumbing ------------------------------------------------------------------------

    def _make_machine(self, backend: MemoryBackend, gid: int) -> KVStateMachine:
        cls = {"unsaved-chunks": _UnsavedChunks, "no-cursor-check": _NoCursorCheck}.get(
            self.cfg.bug, KVStateMachine)
        m = cls(backend, gid=gid)
        if self.cfg.bug == "serve-before-install":
            m.shards.__class__ = _ServeBeforeInstall  # type: ignore[union-attr]
        elif self.cfg.bug == "skip-configs":
            m.shards.__class__ = _SkipConfigs  # type: ignore[union-attr]
        elif self.cfg.bug == "reclaim-unconfirmed":
            m.shards.__class__ = _ReclaimUnconfirmed  # type: ignore[union-attr]
        return m

    def _new_client_id(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    def fail(self, check: str, message: str) -> None:
        if check in self.cfg.disabled_checks:
            return
        raise ShardSimViolation(check, self.seed, self.step_no, message)

    def trace(self, level: int, msg: str) -> None:
        if self.verbose >= level:
            self.out(f"{self.step_no:6d} {msg}")

    def _faulty(self, p: float) -> bool:
        """A fault with probability ``p`` (never in the quiet period)."""
        return not self.quiet and p > 0 and self.rng.random() < p

    def _members(self, gid: int, num: int) -> bool:
        """``ShardDriver._members``: is ``gid`` a group at ``num`` (else the latest)?"""
        for n in (num, -1):
            c = self.ctrl.query(n)
            if c is not None and c.members(gid):
                return True
        return False

    # --- the groups' logs ------------------------------------------------------------------

    def propose_shard(self, g: GroupSim, cmd: ShardCommand, *, dup_of: Result | None = None
                      ) -> Result | None:
        """Propose a shard command to ``g``; None if the group is down."""
        if not g.up:
            return None
        sh = g.sh
        before = sh.num
        gc_of: Outgoing | None = None
        if cmd.op == ShardOp.GC:
            og = sh.outgoing_exact(cmd.num, (cmd.start, cmd.end))
            if og is not None:
                gc_of = Outgoing.from_list(og.to_list())
        res = g.apply(cmd.encode(), self.cfg.snapshot_every)
        sh = g.sh
        name = {ShardOp.CONFIG: "config-applies", ShardOp.CHUNK: "chunks",
                ShardOp.SESSIONS: "session-chunks", ShardOp.GC: "gc-steps"}[cmd.op]
        if res.status == Status.OK:
            self.counts[name] += 1
        else:
            self.counts["stale"] += 1
        self.trace(2, f"g{g.gid} {cmd.op.name} num={cmd.num} [{cmd.start!r},{cmd.end!r}) "
                      f"cursor={cmd.cursor!r} last={cmd.last} -> {res.status.name}")
        if cmd.op == ShardOp.CONFIG and res.status == Status.OK:
            g.configs_taken.append(sh.num)
            self.trace(1, f"g{g.gid} takes configuration {sh.num}")
            if sh.num != before + 1:
                self.fail("config-order", f"group {g.gid} went from configuration {before} "
                                          f"to {sh.num}")
            want = self.ctrl.query(sh.num)
            if want is None or want != sh.config:
                self.fail("config-order", f"group {g.gid} took a configuration {sh.num} "
                                          "that is not the controller's")
        elif sh.num != before:
            self.fail("config-order", f"group {g.gid}: a {cmd.op.name} entry changed the "
                                      f"configuration from {before} to {sh.num}")
        if dup_of is not None and dup_of.status == Status.OK and res.status == Status.OK \
                and cmd.op != ShardOp.GC:
            self.fail("idempotence", f"group {g.gid} applied a duplicated {cmd.op.name} "
                                     f"num={cmd.num} [{cmd.start!r},{cmd.end!r}) twice")
        if gc_of is not None and res.status == Status.OK:
            dest = self.groups[gc_of.to_gid].sh
            if not dest.installed(gc_of.num, gc_of.interval):
                self.fail("gc-safety", f"group {g.gid} deleted from [{gc_of.start!r}, "
                                       f"{gc_of.end!r}) (configuration {gc_of.num}) before "
                                       f"group {gc_of.to_gid} installed it (it is at "
                                       f"{dest.num}, pulls {[p.to_list() for p in dest.pulls]})")
        self._check_persisted(g)
        return res

    def _check_persisted(self, g: GroupSim) -> None:
        saved = g.backend.shard
        want = g.sh.to_dict()
        if (saved if saved is not None else ShardState(g.gid).to_dict()) != want:
            self.fail("persistence", f"group {g.gid}: saved shard state {saved} differs from "
                                     f"the machine's {want}")

    def propose_client(self, g: GroupSim, cmd: Command) -> Result | None:
        if not g.up:
            return None
        res = g.apply(cmd.encode(), self.cfg.snapshot_every)
        if res.status == Status.OK:
            op = self.op_of.get((cmd.client_id, cmd.seq))
            if not cmd.client_id:  # no session: applied every time (scripted writes)
                self._apply_reference(cmd)
            elif op is not None and not op.applied:
                op.applied = True
                self._apply_reference(cmd)
                self.trace(2, f"g{g.gid} applies op {op.id} {op.kind} {cmd.key!r} "
                              f"{cmd.value!r} ({cmd.client_id}#{cmd.seq})")
        elif res.status == Status.WRONG_GROUP:
            self.counts["wrong-group"] += 1
        elif res.status == Status.SESSION_EXPIRED:
            self.counts["session-expired"] += 1
        return res

    def _apply_reference(self, cmd: Command) -> None:
        if cmd.op == Op.PUT:
            self.reference[cmd.key] = cmd.value
        elif cmd.op == Op.APPEND:
            self.reference[cmd.key] = self.reference.get(cmd.key, "") + cmd.value
        else:
            self.reference.pop(cmd.key, None)

    # --- faults --------------------------------------------------------------------------------

    def go_down(self, g: GroupSim, steps: int, crash: bool) -> None:
        g.up = False
        g.down_until = self.step_no + steps
        self.counts["crash" if crash else "down"] += 1
        if crash:
            g.crashed = True
            g.pulls.clear()
            g.gcs.clear()
        self.trace(1, f"g{g.gid} {'CRASH' if crash else 'DOWN'} for {steps} steps")

    def come_up(self, g: GroupSim) -> None:
        if g.crashed:
            b, m = g.rebuild()
            live = g.backend
            if b.data != live.data or b.sessions != live.sessions or b.shard != live.shard:
                self.fail("determinism", f"group {g.gid}: the machine rebuilt from snapshot "
                                         f"{g.snap_index} and {len(g.log)} entries differs "
                                         "from the one that crashed")
            g.backend, g.machine = b, m
            g.crashed = False
            self._check_persisted(g)
            if self.rng.random() < 0.5:
                g.take_snapshot()
        g.up = True
        self.trace(1, f"g{g.gid} UP at configuration {g.sh.num}")

    def fault(self) -> None:
        ups = [g for g in self.groups.values() if g.up]
        if not ups:
            return
        g = self.rng.choice(ups)
        r = self.rng.random()
        if r < 0.2:
            g.take_snapshot()
            return
        steps = self.rng.randint(1, self.cfg.down_steps_max)
        self.go_down(g, steps, crash=r < 0.6)

    # --- the operator (shardctl) ------------------------------------------------------------

    def ctrl_apply(self, cmd: CtrlCommand) -> None:
        res = self.ctrl.apply(cmd.encode())
        if res.changed:
            self.counts["configs"] += 1
            self.counts["plan-dropped"] += res.dropped
            self.trace(1, f"controller: {cmd.op.name} -> configuration {res.num}: "
                          + " ".join(f"[{r.start!r},{r.end!r})@{r.gid}"
                                     for r in self.ctrl.latest().ranges))
        elif not res.ok:
            self.counts["ctrl-rejected"] += 1
            self.trace(2, f"controller: {cmd.op.name} rejected: {res.error}")

    def _join(self, gid: int) -> None:
        n = self.rng.choice((1, 3))
        base = self.rng.randint(1, 3)
        members = tuple((base + i, f"g{gid}n{base + i}:7000") for i in range(n))
        self.ctrl_apply(CtrlCommand(CtrlOp.JOIN, gid=gid, members=members))

    def _sizes(self, cfg: Configuration) -> dict[int, RangeSize]:
        sizes: dict[int, RangeSize] = {}
        for r in cfg.ranges:
            g = self.groups.get(r.gid)
            if g is None or not g.up:
                continue
            items = [(k, v) for k, v in g.backend.data.items()
                     if k >= r.start and (r.end is None or k < r.end)]
            sizes[r.id] = RangeSize(len(items), sum(len(k) + len(v) for k, v in items))
        return sizes

    def operator(self) -> None:
        rng = self.rng
        cfg = self.ctrl.latest()
        joined = cfg.group_ids()
        absent = [g for g in self.groups if g not in joined]
        kinds: list[str] = []
        weights: list[int] = []
        for kind, w, ok in (("join", 3, bool(absent)), ("rejoin", 1, bool(joined)),
                            ("leave", 2, len(joined) > 1), ("move", 4, len(joined) > 1),
                            ("split", 3, len(cfg.ranges) < self.cfg.max_ranges),
                            ("merge", 2, len(cfg.ranges) > 1), ("plan", 2, bool(joined)),
                            ("stale-plan", 1, bool(self.stale_plans))):
            if ok:
                kinds.append(kind)
                weights.append(w)
        if not kinds:
            return
        kind = rng.choices(kinds, weights)[0]
        if kind == "join":
            self._join(rng.choice(absent))
        elif kind == "rejoin":  # new members, no range moves
            self._join(rng.choice(joined))
        elif kind == "leave":
            self.ctrl_apply(CtrlCommand(CtrlOp.LEAVE, gid=rng.choice(joined)))
        elif kind == "move":
            r = rng.choice(cfg.ranges)
            to = [g for g in joined if g != r.gid]
            version = rng.choices((r.version, 0, max(1, r.version - 1)), (6, 3, 1))[0]
            self.ctrl_apply(CtrlCommand(CtrlOp.MOVE, gid=rng.choice(to), range_id=r.id,
                                         version=version))
        elif kind == "split":
            r = rng.choice(cfg.ranges)
            pts = [k for k in self.split_points
                   if k > r.start and (r.end is None or k < r.end)]
            if pts:
                self.ctrl_apply(CtrlCommand(CtrlOp.SPLIT, key=rng.choice(pts)))
        elif kind == "merge":
            same = [i for i in range(1, len(cfg.ranges))
                    if cfg.ranges[i - 1].gid == cfg.ranges[i].gid]
            i = rng.choice(same) if same and rng.random() < 0.9 else \
                rng.randrange(1, len(cfg.ranges))
            self.ctrl_apply(CtrlCommand(CtrlOp.MERGE, key=cfg.ranges[i].start))
        elif kind == "plan":
            live = [g for g in joined if rng.random() < 0.9] or joined
            p = plan(cfg, self._sizes(cfg), groups=live)
            if p.moves:
                if rng.random() < 0.3:  # shown now, applied later (maybe stale by then)
                    self.stale_plans.append(p.as_moves())
                else:
                    self.ctrl_apply(CtrlCommand(CtrlOp.APPLY_PLAN, moves=p.as_moves()))
        else:
            moves = self.stale_plans.pop(rng.randrange(len(self.stale_plans)))
            self.ctrl_apply(CtrlCommand(CtrlOp.APPLY_PLAN, moves=moves))

    # --- the driver (kvraft/runtime/migration.py ShardDriver) ----------------------------------

    def _after_propose(self, g: GroupSim, cmd: ShardCommand, res: Result | None) -> bool:
        """Network faults around a driver's proposal; False if its answer was lost."""
        if res is not None and self._faulty(self.cfg.dup):
            self.counts["dup"] += 1
            self.propose_shard(g, cmd, dup_of=res)
        if self._faulty(self.cfg.delay):
            self.delayed.append(Delayed(g.gid, shard=cmd))
        if res is None or self._faulty(self.cfg.reply_loss):
            self.counts["lost"] += 1
            return False
        return True

    def driver_step(self, g: GroupSim) -> None:
        """``ShardDriver.step``."""
        sh = g.sh
        if self.cfg.bug != "no-gc":
            for og in sh.outgoing:
                k = (og.num, og.start, og.end)
                if k not in g.gcs:
                    g.gcs[k] = GcTask(Outgoing.from_list(og.to_list()))
        if sh.pulls:
            for p in sh.pulls:
                k = (sh.num, p.range_id, p.start)
                if k not in g.pulls and len(g.pulls) < self.cfg.max_concurrent_pulls:
                    g.pulls[k] = PullTask(sh.num, Pull.from_list(p.to_list()))
            return
        if self._faulty(self.cfg.loss):  # the controller did not answer
            self.counts["lost"] += 1
            return
        nxt = self.ctrl.query(-1 if self.cfg.bug == "skip-configs" else sh.num + 1)
        if nxt is None or nxt.num <= sh.num:
            return
        if not sh.can_take(nxt):  # gives back a range not confirmed yet (see gc_step)
            self.counts["held"] += 1
            return
        cmd = ShardCommand(ShardOp.CONFIG, nxt.num, config=nxt.to_dict())
        self._after_propose(g, cmd, self.propose_shard(g, cmd))

    def pull_step(self, g: GroupSim, key: tuple[int, int, str]) -> None:
        """One round of ``ShardDriver._pull``'s loop."""
        t = g.pulls[key]
        p = t.pull
        if not self._members(p.src_gid, t.num - 1):
            del g.pulls[key]  # Unavailable: the task fails, step() starts it again
            return
        src = self.groups[p.src_gid]
        if not src.up or self._faulty(self.cfg.loss):
            self.counts["lost"] += 1
            return
        try:
            if p.phase == KEYS:
                items, last = export_keys(src.backend, src.sh, t.num, p.interval, g.gid,
                                          p.cursor, self.cfg.chunk_bytes)
                cmd = ShardCommand(ShardOp.CHUNK, t.num, p.range_id, p.start, p.end,
                                   cursor=p.cursor,
                                   next_cursor=items[-1][0] if items else p.cursor,
                                   last=last, items=tuple(items))
            else:
                recs, nxt, last = export_sessions(src.backend, src.sh, t.num, p.interval,
                                                  g.gid, p.cursor, self.cfg.session_chunk)
                if self.cfg.bug == "skip-sessions":
                    recs, last = [], True
                elif self.cfg.bug == "drop-results":
                    recs = [(cid, ack, ()) for cid, ack, _ in recs]
                if self.cfg.bug == "never-finish":
                    last = False
                cmd = ShardCommand(ShardOp.SESSIONS, t.num, p.range_id, p.start, p.end,
                                   cursor=p.cursor, next_cursor=nxt, last=last,
                                   sessions=tuple(recs))
        except (NotReady, LookupError) as e:
            self.counts["not-ready"] += 1
            self.trace(3, f"g{g.gid} pull [{p.start!r},{p.end!r}) from g{p.src_gid}: {e}")
            return
        if not self._after_propose(g, cmd, self.propose_shard(g, cmd)):
            del g.pulls[key]  # the proposal timed out: the task fails
            return
        sh = g.sh
        cur = None if sh.num != t.num else next(
            (q for q in sh.pulls if q.range_id == p.range_id and q.start == p.start), None)
        if cur is None:
            del g.pulls[key]
            self.trace(1, f"g{g.gid} installed range {p.range_id} [{p.start!r},{p.end!r}) "
                          f"from g{p.src_gid} at {t.num}")
            return
        p.cursor, p.phase = cur.cursor, cur.phase

    def gc_step(self, g: GroupSim, key: tuple[int, str, str | None]) -> None:
        """One round of ``ShardDriver._gc``'s loops."""
        t = g.gcs[key]
        og = t.og
        if not self._members(og.to_gid, og.num):
            del g.gcs[key]
            return
        if not og.gc and not t.confirmed and self.cfg.bug != "gc-unconfirmed":
            dest = self.groups[og.to_gid]
            if not dest.up or self._faulty(self.cfg.loss):
                self.counts["lost"] += 1
                return
            if dest.sh.installed(og.num, og.interval):
                t.confirmed = True
            return
        cmd = ShardCommand(ShardOp.GC, og.num, start=og.start, end=og.end,
                           limit=self.cfg.gc_batch_keys)
        if not self._after_propose(g, cmd, self.propose_shard(g, cmd)):
            del g.gcs[key]
            return
        if g.sh.outgoing_exact(og.num, (og.start, og.end)) is None:
            del g.gcs[key]
            self.trace(1, f"g{g.gid} deleted [{og.start!r},{og.end!r}) after g{og.to_gid} "
                          "installed it")

    def deliver(self) -> None:
        d = self.delayed.pop(self.rng.randrange(len(self.delayed)))
        g = self.groups[d.gid]
        self.counts["delayed"] += 1
        if d.shard is not None:
            self.propose_shard(g, d.shard)
        elif d.client is not None:
            self.propose_client(g, d.client)

    # --- clients (kvraft/client.py AsyncClient) -------------------------------------------------

    def _refresh(self, c: SimClient) -> None:
        if self._faulty(self.cfg.loss):
            self.counts["lost"] += 1
            return
        latest = self.ctrl.latest()
        if latest.num >= c.map.num:
            c.map = latest

    def start_op(self, c: SimClient) -> None:
        rng = self.rng
        key = rng.choice(self.keys)
        if key in self.append_only:
            kind = rng.choices(("append", "get"), (7, 3))[0]
        else:
            kind = rng.choices(("put", "append", "delete", "get"), (35, 30, 5, 30))[0]
        op = ClientOp(self.next_op, c.idx, kind, key, started=self.step_no)
        self.next_op += 1
        if kind == "append":
            op.value = f"[{op.id}]"
            self.token_op[str(op.id)] = op
        elif kind == "put":
            op.value = f"<p{op.id}>"
        if kind != "get":
            op.route_gid = c.map.range_for(key).gid
            op.sess = c.session_for(op.route_gid)
            op.seq = op.sess.begin()
            self.op_of[(op.sess.client_id, op.seq)] = op
        c.ops.append(op)
        self.attempt(c, op)

    def _finish(self, c: SimClient, op: ClientOp, outcome: str) -> None:
        op.outcome = outcome
        if op.sess is not None:
            op.sess.inflight.discard(op.seq)
        c.ops.remove(op)
        self.ops_done.append(op)
        self.counts[f"acked-{op.kind}" if outcome == "ok" else outcome] += 1
        self.trace(2, f"client {c.idx}: op {op.id} {op.kind} {op.key!r} -> {outcome}")

    def attempt(self, c: SimClient, op: ClientOp) -> None:
        """One attempt of ``AsyncClient._call``."""
        op.attempts += 1
        if op.attempts > self.cfg.op_attempts_max and not self.quiet:
            self._finish(c, op, "unknown" if op.maybe_applied else "failed")
            return
        cfg = c.map
        gid = cfg.range_for(op.key).gid
        num = cfg.num
        if not cfg.members(gid):  # nothing serves the key yet: the map may be stale
            self._refresh(c)
            return
        g = self.groups[gid]
        if not g.up:  # connection refused: certainly not applied
            return
        if op.kind == "get":
            if self._faulty(self.cfg.loss):
                self.counts["lost"] += 1
                return
            sh = g.sh
            if sh.serving_range(op.key) is None:
                self.counts["wrong-group"] += 1
                if sh.num >= num:
                    self._refresh(c)
                return
            value = g.backend.get(op.key)
            want = self.reference.get(op.key)
            if value != want:
                self.fail("linearizable-read", f"get {op.key!r} at group {g.gid} returned "
                                               f"{value!r}, the applied operations give "
                                               f"{want!r}")
            self._finish(c, op, "ok")
            return
        assert op.sess is not None
        cmd = Command(Op[op.kind.upper()], op.key, op.value, op.sess.client_id, op.seq,
                      min(op.sess.ack_below(), op.seq), num)
        if self._faulty(self.cfg.loss):  # the request (or its answer) is lost: a timeout
            self.counts["lost"] += 1
            op.maybe_applied = True
            return
        if self._faulty(self.cfg.delay):  # held back in the network: arrives later
            self.delayed.append(Delayed(gid, client=cmd))
            op.maybe_applied = True
            return
        res = self.propose_client(g, cmd)
        assert res is not None
        if self._faulty(self.cfg.dup):
            self.counts["dup"] += 1
            self.propose_client(g, cmd)
        if self._faulty(self.cfg.reply_loss):
            self.counts["lost"] += 1
            op.maybe_applied = True
            return
        if res.status == Status.OK:
            self._finish(c, op, "ok")
        elif res.status == Status.DUPLICATE_FORGOTTEN:
            self.fail("exactly-once", f"group {g.gid} answered the live retry "
                                      f"{cmd.client_id}#{cmd.seq} of op {op.id} as forgotten")
            self._finish(c, op, "ok")
        elif res.status == Status.WRONG_GROUP:
            if res.num >= num:  # rule 3: only a group not behind our map makes us refresh
                self._refresh(c)
        elif res.status == Status.SESSION_EXPIRED:
            op.sess.inflight.discard(op.seq)
            if op.maybe_applied:
                self._finish(c, op, "unknown")
            elif op.fresh:
                self._finish(c, op, "failed")
            else:  # the server never saw this session: start a fresh one
                op.fresh = True
                c.base = self._new_client_id()
                c.sessions.clear()
                op.sess = c.session_for(op.route_gid)
                op.seq = op.sess.begin()
                self.op_of[(op.sess.client_id, op.seq)] = op
        else:
            self.fail("exactly-once", f"unexpected result {res} for op {op.id}")

    def client_step(self) -> None:
        if not self.clients:
            return
        c = self.rng.choice(self.clients)
        room = not self.quiet and len(c.ops) < self.cfg.max_inflight
        if c.ops and (not room or self.rng.random() < 0.6):
            self.attempt(c, self.rng.choice(c.ops))
        elif room:
            self.start_op(c)

    # --- checks ------------------------------------------------------------------------------

    def check_serving(self) -> None:
        """No key is served by two groups (probing every range start is exact)."""
        probes = set(self.keys)
        for g in self.groups.values():
            probes.update(r.start for r in g.sh.config.ranges)
        for k in sorted(probes):
            owners = [g.gid for g in self.groups.values() if g.sh.serving_range(k) is not None]
            if len(owners) > 1:
                self.fail("exclusive-serving", f"key {k!r} is served by groups {owners} "
                          f"(at configurations {[self.groups[o].sh.num for o in owners]})")

    def check_handoff(self) -> None:
        for g in self.groups.values():
            sh = g.sh
            for p in sh.pulls:
                src = self.groups[p.src_gid].sh
                if src.num >= sh.num and src.outgoing_for(sh.num, p.interval, g.gid) is None:
                    self.fail("handoff", f"group {g.gid} at configuration {sh.num} still pulls "
                              f"[{p.start!r}, {p.end!r}) from group {p.src_gid}, which is at "
                              f"{src.num} and no longer holds it for group {g.gid} (outgoing "
                              f"{src.view()['outgoing']}): the hand-off is lost")

    def progress(self) -> tuple[Any, ...]:
        """What must change while the quiet period makes progress (counters of applied
        entries are left out: an entry that changes nothing is no progress)."""
        return (len(self.ops_done), len(self.delayed), tuple(
            (g.sh.num, tuple((p.range_id, p.start, p.phase, p.cursor) for p in g.sh.pulls),
             tuple((o.num, o.start, o.end, o.deleted) for o in g.sh.outgoing))
            for g in self.groups.values()))

    def settled(self) -> bool:
        """Every group up at the latest configuration with nothing to pull, every client
        operation done, nothing left in the network (outgoing records may remain)."""
        latest = self.ctrl.latest().num
        return (not self.delayed and all(not c.ops for c in self.clients)
                and all(g.up and g.sh.num == latest and not g.sh.pulls
                        for g in self.groups.values()))

    def final_checks(self) -> None:
        cfg = self.ctrl.latest()
        for g in self.groups.values():
            sh = g.sh
            if sh.num != cfg.num:
                self.fail("liveness", f"group {g.gid} is at configuration {sh.num}, the "
                                      f"latest is {cfg.num}")
            if sh.pulls or sh.outgoing:
                self.fail("gc", f"group {g.gid} still has pulls {sh.view()['pulling']} or "
                                f"outgoing {sh.view()['outgoing']}")
            for k in sorted(g.backend.data):
                if cfg.range_for(k).gid != g.gid:
                    self.fail("gc", f"group {g.gid} still holds {k!r}, owned by group "
                                    f"{cfg.range_for(k).gid}")
        for k in self.keys:
            owner = self.groups.get(cfg.range_for(k).gid)
            value = owner.backend.get(k) if owner is not None else None
            if k in self.append_only:
                self._check_tokens(k, value)
            if value != self.reference.get(k):
                self.fail("durability", f"key {k!r} is {value!r} at its owner, group "
                          f"{cfg.range_for(k).gid}; the applied operations give "
                          f"{self.reference.get(k)!r}")

    def _check_tokens(self, k: str, value: str | None) -> None:
        seen = Counter(_TOKEN.findall(value or ""))
        for tok, n in sorted(seen.items()):
            op = self.token_op.get(tok)
            if op is None or op.key != k:
                self.fail("exactly-once", f"key {k!r} holds token [{tok}], never appended "
                                          "to it")
                continue
            if n > 1:
                self.fail("exactly-once", f"append [{tok}] (op {op.id}, {op.outcome}) "
                                          f"appears {n} times in {k!r}")
            if op.outcome == "failed":
                self.fail("exactly-once", f"append [{tok}] failed, yet it is in {k!r}")
        for op in self.ops_done:
            if op.key == k and op.kind == "append" and op.outcome == "ok" \
                    and str(op.id) not in seen:
                self.fail("exactly-once", f"acknowledged append [{op.id}] is missing from "
                                          f"{k!r}: {value!r}")

    def describe(self) -> str:
        lines = [f"controller at {self.ctrl.latest().num}: "
                 + " ".join(f"{r.id}:[{r.start!r},{r.end!r})@{r.gid}v{r.version}"
                            for r in self.ctrl.latest().ranges)]
        for g in self.groups.values():
            v = g.sh.view()
            lines.append(f"  g{g.gid} {'up' if g.up else 'DOWN'} num={v['num']} "
                         f"pulling={v['pulling']} outgoing={v['outgoing']} "
                         f"tasks={len(g.pulls)}p/{len(g.gcs)}gc keys={len(g.backend.data)}")
        for c in self.clients:
            for op in c.ops:
                lines.append(f"  client {c.idx} op {op.id} {op.kind} {op.key!r} "
                             f"attempts={op.attempts} map={c.map.num}")
        return "\n".join(lines)

    # --- the run -------------------------------------------------------------------------------

    def setup(self) -> None:
        for gid in range(1, self.cfg.initial_groups + 1):
            self._join(gid)
        for _ in range(self.rng.randint(0, 3)):
            cfg = self.ctrl.latest()
            r = self.rng.choice(cfg.ranges)
            pts = [k for k in self.split_points if k > r.start and (r.end is None or k < r.end)]
            if pts:
                self.ctrl_apply(CtrlCommand(CtrlOp.SPLIT, key=self.rng.choice(pts)))
        for c in self.clients:
            c.map = self.ctrl.latest()

    def step(self) -> None:
        self.step_no += 1
        for g in self.groups.values():
            if not g.up and (self.quiet or g.down_until <= self.step_no):
                self.come_up(g)
        cfg = self.cfg
        ups = [g for g in self.groups.values() if g.up]
        pulls = [(g, k) for g in ups for k in g.pulls]
        gcs = [(g, k) for g in ups for k in g.gcs]
        choices: list[tuple[str, int]] = [("client", cfg.w_client), ("driver", cfg.w_driver)]
        if pulls:
            choices.append(("pull", cfg.w_pull))
        if gcs:
            choices.append(("gc", cfg.w_gc))
        if self.delayed:
            choices.append(("deliver", cfg.w_deliver))
        if not self.quiet:
            choices += [("operator", cfg.w_operator), ("fault", cfg.w_fault)]
        choices = [(k, w) for k, w in choices if w > 0]
        kind = self.rng.choices([k for k, _ in choices], [w for _, w in choices])[0]
        if kind == "client":
            self.client_step()
        elif kind == "driver":
            if ups:
                self.driver_step(self.rng.choice(ups))
        elif kind == "pull":
            g, k = self.rng.choice(pulls)
            self.pull_step(g, k)
        elif kind == "gc":
            g, gk = self.rng.choice(gcs)
            self.gc_step(g, gk)
        elif kind == "deliver":
            self.deliver()
        elif kind == "operator":
            self.operator()
        else:
            self.fault()
        self.check_serving()
        self.check_handoff()

    def run(self, steps: int) -> None:
        self.trace(1, f"seed {self.seed}: {self.cfg}")
        self.setup()
        for _ in range(steps):
            self.step()
        self.settle()

    def settle(self) -> None:
        """The quiet period, then the final checks: first every group must reach the
        latest configuration and every operation finish (``liveness``), then the old
        owners get ``gc_drain_steps`` more steps to delete what they handed off (what
        is left then fails ``gc``)."""
        self.quiet = True
        self.trace(1, "QUIET: faults, operator and new operations stop")
        start = last_change = self.step_no
        sig = self.progress()
        while not self.settled():
            if self.step_no - last_change >= self.cfg.stall_steps \
                    or self.step_no - start >= self.cfg.quiet_max_steps:
                self.fail("liveness", f"no progress for {self.step_no - last_change} steps, "
                                      f"{self.step_no - start} steps into the quiet period:"
                                      f"\n{self.describe()}")
                break
            self.step()
            now = self.progress()
            if now != sig:
                sig, last_change = now, self.step_no
        self.counts["quiet-steps"] = self.step_no - start
        drain = self.step_no
        while any(g.sh.outgoing for g in self.groups.values()) \
                and self.step_no - drain < self.cfg.gc_drain_steps:
            self.step()
        self.counts["quiet-steps"] = self.step_no - start
        self.final_checks()


def run(seed: int, steps: int = 300, *, verbose: int = 0, out: Callable[[str], None] = print,
        **overrides: Any) -> Report:
    """Run one seed; a failure is reported in the result, never raised."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    cfg = profile_for_seed(rng, **overrides)
    world = ShardWorld(seed, cfg, rng=rng, verbose=verbose, out=out)
    rep = Report(seed, steps)
    try:
        world.run(steps)
    except ShardSimViolation as e:
        rep.ok, rep.check, rep.error = False, e.check, str(e)
    except Exception as e:  # a crash of the pure code or of the model is a failure too
        rep.ok, rep.check = False, "exception"
        rep.error = (f"[exception] seed={seed} step={world.step_no}: "
                     f"{type(e).__name__}: {e}")
    rep.counts = world.counts
    rep.final_num = world.ctrl.latest().num
    rep.quiet_steps = world.counts.get("quiet-steps", 0)
    rep.seconds = time.perf_counter() - t0
    if not rep.ok:
        rep.state = world.describe()
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvraft.sim.shards",
                                 description="Deterministic model checker of range migration.")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=0, help="number of seeds to run")
    g.add_argument("--seed", type=int, help="replay this one seed")
    ap.add_argument("--start", type=int, help="first seed (seeds start..start+N-1); "
                    "without it seeds are drawn from the OS")
    ap.add_argument("--steps", type=int, default=300, help="faulty steps per seed")
    ap.add_argument("--bug", choices=BUGS, help="run a deliberately broken variant")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="-v: configurations, faults, installs; -vv: every entry and op")
    args = ap.parse_args(argv)
    over: dict[str, Any] = {}
    if args.bug:
        over["bug"] = args.bug
    extra = f" --bug {args.bug}" if args.bug else ""

    if args.seed is not None:
        rep = run(args.seed, args.steps, verbose=args.verbose, **over)
        print(("OK " if rep.ok else "FAIL ") + f"seed={rep.seed} steps={rep.steps} "
              f"({rep.seconds:.2f}s) {rep.summary()}")
        if not rep.ok:
            print(rep.error)
            print(rep.state)
        return 0 if rep.ok else 1

    n = args.seeds or 1
    if args.start is not None:
        seeds = [args.start + k for k in range(n)]
    else:
        sysrng = random.SystemRandom()
        seeds = [sysrng.randrange(1 << 32) for _ in range(n)]
    failures: Counter[str] = Counter()
    total: Counter[str] = Counter()
    t0 = time.perf_counter()
    for seed in seeds:
        if args.start is None:
            print(f"seed {seed}", flush=True)
        rep = run(seed, args.steps, **over)
        total.update(rep.counts)
        if not rep.ok:
            failures[rep.check] += 1
            print(f"FAIL seed={seed} steps={args.steps}: {rep.error.splitlines()[0]}  "
                  f"(replay: python -m kvraft.sim.shards --seed {seed} --steps {args.steps}"
                  f"{extra} -v)", flush=True)
    nfail = sum(failures.values())
    print(f"{len(seeds)} seeds, {len(seeds) - nfail} clean, {nfail} failed "
          f"{dict(sorted(failures.items()))}, steps={args.steps} "
          f"({time.perf_counter() - t0:.1f}s)")
    print("totals: " + " ".join(f"{k}={v}" for k, v in sorted(total.items())))
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
