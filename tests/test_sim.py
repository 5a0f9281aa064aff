"""Deterministic simulation of 3- and 5-replica Raft groups (kvraft.sim).

Every test is driven by explicit seeds and prints them; a failure replays exactly with
``python -m kvraft.sim --seed S --nodes N --ticks T -v`` (random-profile runs) or by
re-running the scenario function with the printed seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from kvraft.raft import NONE, Entry, HardState, Message, MsgType, RaftCore, Ready, Role, roles
from kvraft.sim import (
    STEPS_PER_TICK,
    Cluster,
    SafetyViolation,
    SimConfig,
    make_cluster,
    run_seed,
    runner,
)

# --- random-profile runs with fixed seeds ---------------------------------------------

FOCUS: dict[str, dict[str, Any]] = {
    "crash": {"faults": frozenset({"crash"}), "crash_rate": 0.03, "crash_after_write": 0.003},
    "split": {"faults": frozenset({"split"}), "partition_rate": 0.03},
    "isolate": {"faults": frozenset({"isolate"}), "partition_rate": 0.03},
    "oneway": {"faults": frozenset({"oneway"}), "partition_rate": 0.03},
    "partial": {"faults": frozenset({"partial"}), "partition_rate": 0.03},
    "lossy": {"faults": frozenset({"loss", "dup", "reorder"}), "loss": 0.1, "dup": 0.05,
              "reorder": 0.1},
    "transfer": {"faults": frozenset({"transfer"}), "transfer_rate": 0.02},
    "all": {"faults": frozenset({"crash", "split", "isolate", "oneway", "partial", "loss",
                                 "dup", "reorder", "transfer"}),
            "crash_rate": 0.02, "partition_rate": 0.02, "transfer_rate": 0.01},
}


def _happened(c: Cluster, focus: str) -> bool:
    net = c.network
    if focus.startswith("snap"):
        return c.events.get("snap-take", 0) > 0 and c.events.get("snap-install", 0) > 0
    if focus == "lossy":
        return net.lost > 0 and net.duplicated > 0 and net.reordered > 0
    if focus == "all":
        return c.events.get("crash", 0) > 0 and net.lost > 0 and any(
            c.events.get(k, 0) for k in ("split", "isolate", "oneway", "partial"))
    return c.events.get(focus, 0) > 0


def _run(seed: int, nodes: int, ticks: int, *, core_factory: Any = RaftCore,
         **overrides: Any) -> Cluster:
    print(f"\nseed={seed} nodes={nodes} ticks={ticks}")
    c = make_cluster(seed, nodes, ticks, core_factory=core_factory, **overrides)
    print(c.cfg.describe())
    c.run()
    print(c.summary())
    return c


ALL_FAULTS = FOCUS["all"]["faults"]
FOCUS.update({
    # Frequent snapshots, compaction up to the snapshot (margin 0): any follower that
    # misses a few entries needs InstallSnapshot; streams fail and installs crash.
    "snap-margin0": {"faults": ALL_FAULTS, "crash_rate": 0.03, "crash_after_write": 0.003,
                     "partition_rate": 0.02, "snapshot_every": 5, "snapshot_margin": 0,
                     "install_crash": 0.3, "stream_fail": 0.2},
    # Compaction keeps a few entries below the snapshot for slightly lagging followers.
    "snap-margin": {"faults": frozenset({"crash", "isolate", "oneway", "loss", "reorder"}),
                    "crash_rate": 0.04, "partition_rate": 0.03, "snapshot_every": 10,
                    "snapshot_margin": 4, "install_crash": 0.3, "stream_fail": 0.2,
                    "down_ticks_max": 60, "propose_rate": 1.0},
})

SEEDS_3 = [(focus, seed) for focus in FOCUS for seed in (101, 102, 103)]
SEEDS_5 = [(focus, seed) for focus in FOCUS for seed in (201, 202)]


@pytest.mark.parametrize("focus,seed", SEEDS_3)
def test_fixed_seeds_3_replicas(focus: str, seed: int) -> None:
    c = _run(seed, 3, 600, **FOCUS[focus])
    assert _happened(c, focus), f"seed {seed} injected no {focus} fault"
    assert c.client.stats["acked"] > 0


@pytest.mark.parametrize("focus,seed", SEEDS_5)
def test_fixed_seeds_5_replicas(focus: str, seed: int) -> None:
    c = _run(seed, 5, 500, **FOCUS[focus])
    assert _happened(c, focus), f"seed {seed} injected no {focus} fault"
    assert c.client.stats["acked"] > 0


@pytest.mark.parametrize("seed,nodes", [(s, 3) for s in range(1, 21)] + [(s, 5) for s in range(1, 9)])
def test_random_profiles(seed: int, nodes: int) -> None:
    """The profile the command-line runner uses: every parameter drawn from the seed
    (snapshots are on in about 70% of the seeds)."""
    _run(seed, nodes, 1000)


CHAOS: dict[str, Any] = {
    "faults": FOCUS["all"]["faults"], "crash_rate": 0.06, "crash_after_write": 0.01,
    "down_ticks_max": 10, "partition_rate": 0.05,
}


@pytest.mark.parametrize("seed,nodes", [(301, 3), (302, 3), (303, 5)])
def test_chaos(seed: int, nodes: int) -> None:
    """Crash-heavy: a crash every ~17 ticks, some right after a disk write."""
    c = _run(seed, nodes, 600, **CHAOS)
    assert c.events.get("crash", 0) >= 10


SNAP_CHAOS_HEAVY: dict[str, Any] = {
    **CHAOS, "snapshot_every": 3, "snapshot_margin": 0, "snapshot_take_max": 5,
    "install_crash": 0.3, "stream_fail": 0.2, "apply_sync": 0.5,
}


@pytest.mark.parametrize("seed,nodes", [(304, 3), (305, 3), (306, 5), (307, 5)])
def test_chaos_with_snapshots(seed: int, nodes: int) -> None:
    """Crash-heavy with a snapshot every 3 entries, compaction to the snapshot, a lagging
    durable applied index, failing streams and crashes during installs."""
    c = _run(seed, nodes, 600, **SNAP_CHAOS_HEAVY)
    assert c.events.get("crash", 0) >= 10 and c.events.get("snap-install", 0) > 0
    assert c.events.get("snap-recover", 0) > 0


@pytest.mark.parametrize("seed,nodes", [(401, 3), (402, 5)])
def test_constant_elections_stay_safe(seed: int, nodes: int) -> None:
    """Election timeouts shorter than message and disk latency: elections never stop.
    Only safety is checked (progress is not expected)."""
    c = _run(seed, nodes, 400, election_ticks=3, heartbeat_ticks=1, crash_rate=0.03,
             crash_after_write=0.005, down_ticks_max=6,
             disabled_checks=frozenset({"liveness"}))
    assert max(c.checker.leaders, default=0) >= 3


# Seeds that found the stuck-replication bug (a follower whose in-flight window is full
# of lost appends was never sent anything again): they failed `liveness` before the fix.
# They run without snapshots, which replays them exactly as when they were found.
REGRESSION_SEEDS = [(2, 3, 400), (6, 3, 400), (8, 3, 400), (3, 5, 400), (6, 5, 400)]
NO_SNAPSHOTS: dict[str, Any] = {"snapshot_every": 0}


@pytest.mark.parametrize("seed,nodes,ticks", REGRESSION_SEEDS)
def test_regression_seeds(seed: int, nodes: int, ticks: int) -> None:
    _run(seed, nodes, ticks, **NO_SNAPSHOTS)


def test_replay_does_not_depend_on_the_hash_seed() -> None:
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run(
            [sys.executable, "-m", "kvraft.sim", "--seed", "9", "--ticks", "200", "-vv"],
            env=env, capture_output=True, text=True, check=True)
        outs.append(proc.stdout.splitlines()[:-1])  # the last line has the wall time
    assert outs[0] == outs[1] and len(outs[0]) > 10


def test_replay_is_deterministic() -> None:
    traces: list[list[str]] = [[], []]
    for k in range(2):
        c = make_cluster(7, 3, 300, verbose=2, out=traces[k].append)
        c.run()
        traces[k].append(c.summary())
    assert traces[0] == traces[1]
    assert any("becomes LEADER" in line for line in traces[0])


# --- scripted scenarios ---------------------------------------------------------------


def _calm(nodes: int, **kw: Any) -> SimConfig:
    base: dict[str, Any] = {"nodes": nodes, "propose_rate": 0.3, "read_rate": 0.1}
    base.update(kw)
    return SimConfig(**base)


def _leader(c: Cluster, among: list[int] | None = None) -> Any:
    lead = c.wait_for_leader(30 * c.cfg.election_ticks, among)
    assert lead is not None, "no leader elected"
    return lead


def _settle_and_check(c: Cluster) -> None:
    c.settle()
    c.checker.full_scan()


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", [11, 12])
def test_partitioned_follower_rejoins_without_raising_terms(nodes: int, seed: int) -> None:
    print(f"\nseed={seed} nodes={nodes}")
    c = Cluster(seed, _calm(nodes))
    e = c.cfg.election_ticks
    lead = _leader(c)
    term = lead.the_core().term
    follower = next(n for n in c.nodes.values() if n is not lead)
    c.isolate(follower.id)
    c.run_ticks(10 * e)
    assert follower.the_core().term == term, "pre-vote must keep an isolated node's term"
    c.heal()
    c.run_ticks(10 * e)
    assert lead.the_core().role == Role.LEADER and lead.the_core().term == term
    assert c.max_term() == term
    assert follower.the_core().leader == lead.id
    _settle_and_check(c)


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", [21, 22])
def test_isolated_leader_steps_down_and_rejoins_quietly(nodes: int, seed: int) -> None:
    print(f"\nseed={seed} nodes={nodes}")
    c = Cluster(seed, _calm(nodes))
    e = c.cfg.election_ticks
    old = _leader(c)
    t0 = old.the_core().term
    c.isolate(old.id)
    start = c.now
    assert c.run_until_true(lambda: old.the_core().role != Role.LEADER, 2 * e), \
        f"a leader cut off from the majority must step down within {2 * e} ticks"
    print(f"stepped down after {(c.now - start) / STEPS_PER_TICK} ticks")
    others = [i for i in c.nodes if i != old.id]
    new = _leader(c, others)
    t1 = new.the_core().term
    c.run_ticks(10 * e)
    assert old.the_core().term == t0, "pre-vote must keep the isolated node's term"
    c.heal()
    c.run_ticks(10 * e)
    assert new.the_core().role == Role.LEADER and new.the_core().term == t1, \
        "the rejoining node must not disrupt the new leader"
    assert c.max_term() == t1
    assert old.the_core().leader == new.id
    _settle_and_check(c)


@pytest.mark.parametrize("check_quorum", [True, False])
@pytest.mark.parametrize("seed", [31, 32])
def test_minority_leader_cannot_commit(check_quorum: bool, seed: int) -> None:
    print(f"\nseed={seed} check_quorum={check_quorum}")
    c = Cluster(seed, _calm(5, check_quorum=check_quorum))
    e = c.cfg.election_ticks
    old = _leader(c)
    commit0 = old.the_core().log.committed
    others = [i for i in c.nodes if i != old.id]
    minority, majority = [old.id, others[0]], others[1:]
    c.split(minority, majority)
    props = [c.client.propose(old) for _ in range(3)]
    assert all(p is not None for p in props)
    c.run_ticks(6 * e)
    for i in minority:
        assert c.nodes[i].the_core().log.committed == commit0
    if check_quorum:
        assert old.the_core().role != Role.LEADER
    else:
        assert old.the_core().role == Role.LEADER  # nothing tells it otherwise
    _leader(c, majority)
    c.heal()
    _settle_and_check(c)
    for p in props:
        assert p is not None and p.status == "failed"
        assert all(p.payload not in n.sm_payloads for n in c.nodes.values())


def deposed_leader_read(seed: int, check_quorum: bool) -> tuple[Cluster, Any]:
    """A leader is isolated, a new one commits a write, then the old one gets a read."""
    c = Cluster(seed, _calm(3, check_quorum=check_quorum, propose_rate=0.0, read_rate=0.0,
                            election_ticks=10))
    old = _leader(c)
    c.isolate(old.id)
    others = [i for i in c.nodes if i != old.id]
    new = _leader(c, others)
    p = c.client.propose(new)
    assert p is not None
    assert c.run_until_true(lambda: p.status == "acked", 100)
    read = None
    if old.the_core().role == Role.LEADER:
        read = c.client.read(old)
        assert read is not None
        c.run_ticks(3 * c.cfg.election_ticks)
        assert read.status in ("pending", "dropped")
    c.heal()
    c.run_ticks(5 * c.cfg.election_ticks)
    return c, read


@pytest.mark.parametrize("check_quorum", [True, False])
@pytest.mark.parametrize("seed", [41, 42, 43])
def test_read_on_deposed_leader_is_never_stale(check_quorum: bool, seed: int) -> None:
    print(f"\nseed={seed} check_quorum={check_quorum}")
    c, read = deposed_leader_read(seed, check_quorum)
    if not check_quorum:
        assert read is not None, "without check-quorum the old leader keeps believing it leads"
    if read is not None:
        assert read.status == "dropped"
    _settle_and_check(c)


def test_full_window_of_lost_appends_recovers() -> None:
    """Regression: appends lost while a follower's in-flight window is full."""
    c = Cluster(51, _calm(3, max_inflight_msgs=1, max_msg_bytes=64, propose_rate=0.0,
                          read_rate=0.0))
    e = c.cfg.election_ticks
    lead = _leader(c)
    f = next(n for n in c.nodes.values() if n is not lead)
    first = c.client.propose(lead)
    assert first is not None
    assert c.run_until_true(lambda: f.applied >= first.index, 5 * e)
    c.network.block(lead.id, f.id)
    last = 0
    for _ in range(5):
        p = c.client.propose(lead)
        assert p is not None
        last = p.index
        c.run_ticks(1)
    c.run_ticks(3 * e)
    pr = lead.the_core().prs[f.id]
    assert pr.inflights.full()
    c.network.unblock(lead.id, f.id)
    assert c.run_until_true(lambda: f.applied >= last, 5 * e), "the follower never caught up"


def figure8(seed: int, disabled: frozenset[str] = frozenset()) -> Cluster:
    """Raft paper, figure 8: an entry of an old term replicated to a majority by a later
    leader must not count as committed until an entry of the leader's term is.

    With five nodes and one entry per append: X reaches only L1 and F2; L1 crashes; L3
    wins without them, writes its no-op at X's index, crashes before sending it; the
    next leader P (L1 or F2) sends X to A, but not yet its own no-op; P crashes, its
    peer is isolated; L3 restarts and can win with A and B, erasing X.
    """
    c = Cluster(seed, SimConfig(nodes=5, max_msg_bytes=1, max_inflight_msgs=1,
                                propose_rate=0.0, read_rate=0.0, disabled_checks=disabled))
    n = c.nodes
    l1 = _leader(c)
    p0 = c.client.propose(l1)
    assert p0 is not None
    assert c.run_until_true(lambda: all(x.applied >= p0.index for x in n.values()), 100)
    others = [i for i in n if i != l1.id]
    f2, rest = others[0], others[1:]
    for o in rest:
        c.network.block(l1.id, o)
    px = c.client.propose(l1)
    assert px is not None
    i = px.index
    # Durable on both (L1 sent it before its own write completed: wait for that too).
    assert c.run_until_true(lambda: n[f2].disk.entry(i) is not None
                            and l1.disk.entry(i) is not None, 50)
    c.crash(l1)
    c.isolate(f2)

    def leader_of(ids: list[int], above: int = 0) -> Any:
        for x in ids:
            core = n[x].core
            if core is not None and core.role == Role.LEADER and core.term > above:
                return n[x]
        return None

    # The new leader's appends never arrive: a leader sends them before its own write
    # is durable (thesis 10.2.1), so "crashes before sending it" is "its appends are
    # lost", from the moment it is elected.
    c.network.drop_if = lambda m: m.frm in rest and m.type in (MsgType.APP,
                                                               MsgType.HEARTBEAT)
    assert c.run_until_true(lambda: leader_of(rest) is not None, 300)
    l3 = leader_of(rest)
    t3 = l3.the_core().term
    for o in n:
        if o != l3.id:
            c.network.block(l3.id, o)

    def l3_wrote_noop() -> bool:
        e = l3.disk.entry(i)
        return e is not None and e.term == t3

    assert c.run_until_true(l3_wrote_noop, 50)
    c.crash(l3)
    c.network.drop_if = None
    c.heal()
    a, b = sorted(x for x in rest if x != l3.id)
    c.restart(l1)
    assert c.run_until_true(lambda: leader_of(list(n), t3) is not None, 300)
    p = leader_of(list(n), t3)
    assert p.id in (l1.id, f2)
    q = l1.id if p.id == f2 else f2
    c.network.block(p.id, b)
    tp = p.the_core().term
    # P crashes the moment it counts X committed: an append of its own no-op sent from
    # then on (it may leave in that same step: a leader's appends do not wait for its
    # write) is lost with it. A correct P counts X only after A has its no-op.
    c.network.drop_if = lambda m: (m.frm == p.id and m.type == MsgType.APP
                                   and any(e.term == tp for e in m.entries)
                                   and p.core is not None and p.core.log.committed >= i)
    assert c.run_until_true(lambda: p.core is not None and p.core.log.committed >= i, 300)
    c.crash(p)
    c.network.drop_if = None
    c.isolate(q)
    c.restart(l3)
    c.run_ticks(30 * c.cfg.election_ticks)
    return c


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figure8_scenario_is_safe(seed: int) -> None:
    print(f"\nseed={seed}")
    c = figure8(seed)
    _settle_and_check(c)


# --- snapshots, compaction and InstallSnapshot ------------------------------------------


def _tap(node: Any) -> list[Message]:
    """Record every message delivered to ``node`` from now on (this lifetime)."""
    got: list[Message] = []
    receive = node.receive

    def tap(m: Message) -> None:
        got.append(m)
        receive(m)

    node.receive = tap
    return got


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", [61, 62])
def test_follower_behind_the_compacted_log_catches_up_by_snapshot(nodes: int, seed: int) -> None:
    """A follower down for longer than the leader's log retains comes back: the entries
    it lacks are gone from every log, so it can only catch up by InstallSnapshot."""
    print(f"\nseed={seed} nodes={nodes}")
    c = Cluster(seed, _calm(nodes, propose_rate=1.0, snapshot_every=10, snapshot_margin=5))
    e = c.cfg.election_ticks
    lead = _leader(c)
    f = next(n for n in c.nodes.values() if n is not lead)
    c.crash(f)
    was = f.disk.last_index()
    assert c.run_until_true(lambda: lead.the_core().log.snapshot_index > was + 20, 300)
    point = lead.the_core().log.snapshot_index
    assert all(n.core is None or n.core.log.snapshot_index > was for n in c.nodes.values()), \
        "some log still holds the entries the follower lacks"
    c.restart(f)
    got = _tap(f)
    assert c.run_until_true(lambda: f.applied >= point, 10 * e), "the follower never caught up"
    snaps = [m.snapshot.index for m in got if m.type == MsgType.SNAP and m.snapshot]
    first_appended = min((x.index for m in got if m.type == MsgType.APP for x in m.entries),
                         default=None)
    print(f"down at {was}, leader compacted to {point}; snapshots {snaps}, first entry "
          f"appended {first_appended}; {c.summary()}")
    assert snaps and snaps[0] >= point
    assert first_appended is None or first_appended > snaps[0], "entries below the snapshot"
    assert f.disk.snapshot is not None and f.disk.snapshot.index == snaps[0]
    assert f.disk.log_start[0] == snaps[0]
    assert c.events.get("snap-install") == 1
    assert f.sm == lead.sm[: f.applied], "the installed state machine is the leader's prefix"
    _settle_and_check(c)


def test_crash_during_install_is_repaired_on_restart() -> None:
    """A follower crashes after its disk recorded the snapshot, before its state machine
    was replaced; on restart it installs the recorded snapshot, then catches up."""
    c = Cluster(71, _calm(3, propose_rate=1.0, snapshot_every=5, faults=frozenset({"crash"}),
                          install_crash=1.0, down_ticks_max=5))
    lead = _leader(c)
    f = next(n for n in c.nodes.values() if n is not lead)
    c.crash(f)
    assert c.run_until_true(lambda: lead.the_core().log.snapshot_index > f.disk.last_index() + 5,
                            200)
    c.faulty = True  # only install crashes are enabled (every other rate is 0)
    c.restart(f)
    assert c.run_until_true(lambda: c.events.get("install-crash", 0) > 0, 100)
    d = f.disk
    assert not f.up and d.snapshot is not None and d.applied < d.log_start[0] == d.snapshot.index
    c.cfg = replace(c.cfg, install_crash=0.0)
    assert c.run_until_true(lambda: f.up, 100)
    assert c.events.get("snap-recover") == 1
    assert f.applied >= d.snapshot.index and f.sm == lead.sm[: f.applied]
    c.faulty = False
    _settle_and_check(c)


def stable_after_truncation(seed: int) -> tuple[Cluster, bool]:
    """A follower's write of entries [a..b] with commit c (a <= c < b) is in flight when a
    new leader's append replaces entries above c; once the write completes, the follower
    applies up to c and snapshots (margin 0, at once), compacting its log to c.

    The follower F (of 5) restarts behind: the old leader L, cut off from the three
    others, sends it its committed entries and an uncommitted tail in one append. F's
    disk is slow, so the others elect a new leader whose no-op overwrites the tail in
    F's log while the write is in flight. Returns the cluster and whether that happened.
    """
    c = Cluster(seed, SimConfig(nodes=5, propose_rate=0.0, read_rate=0.0, check_quorum=False))
    n = c.nodes
    lead = _leader(c)
    others = [i for i in n if i != lead.id]
    f, rest = n[others[0]], others[1:]
    c.crash(f)
    ps = [c.client.propose(lead) for _ in range(3)]
    assert c.run_until_true(lambda: all(p is not None and p.status == "acked" for p in ps), 100)
    assert ps[-1] is not None
    k = ps[-1].index
    c.cfg = replace(c.cfg, snapshot_every=1, snapshot_margin=0, snapshot_take_max=0)
    for o in rest:
        c.network.block(lead.id, o)
        c.network.block(o, lead.id)
    assert all(c.client.propose(lead) is not None for _ in range(2))  # k+1, k+2: uncommitted
    f.disk_delay = (40 * STEPS_PER_TICK, 40 * STEPS_PER_TICK)
    c.restart(f)

    def batch_in_flight() -> bool:
        rd = f.inflight
        return rd is not None and bool(rd.entries) and rd.entries[-1].index == k + 2 \
            and bool(rd.committed) and rd.committed[-1].index == k
    assert c.run_until_true(batch_in_flight, 100)
    rd = f.inflight
    replaced = []

    def written() -> bool:
        core = f.core
        if f.inflight is rd and core is not None and core.log.term(k + 1) not in (
                None, rd.entries[-2].term):
            replaced.append(k + 1)
        return f.inflight is not rd
    assert c.run_until_true(written, 100)
    f.disk_delay = None
    return c, bool(replaced)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_entries_applied_before_a_truncation_stay_stable(seed: int) -> None:
    """Regression: RaftCore.advance marked only the Ready's last entry stable; with that
    entry replaced meanwhile, ``stable`` stayed below the entries just applied and the
    follower's compaction to its applied index raised InvariantViolation."""
    c, replaced = stable_after_truncation(seed)
    assert replaced, "the scenario did not replace in-flight entries"
    assert c.events.get("snap-take", 0) > 0
    c.heal()
    _settle_and_check(c)


# --- the checkers can fail: deliberately broken cores --------------------------------


def _count_commit(r: RaftCore) -> bool:
    """maybe_commit without the current-term rule: commits by counting replicas."""
    index = r.committed_by_quorum()
    if index <= r.log.committed:
        return False
    r.log.commit_to(index)
    r.bcast_pending = True
    if r.reads_before_commit:
        waiting, r.reads_before_commit = r.reads_before_commit, []
        for ctx, frm in waiting:
            roles.register_read(r, ctx, frm)
    return True


def test_checkers_catch_commit_by_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "maybe_commit", _count_commit)
    with pytest.raises(SafetyViolation) as exc:
        figure8(1)
    print(exc.value)
    assert exc.value.check == "commit-rule"
    # Without the rule-level check: a leader is elected by a majority none of which
    # holds the entry counted as committed (disjoint majorities).
    with pytest.raises(SafetyViolation) as exc:
        figure8(1, disabled=frozenset({"commit-rule"}))
    print(exc.value)
    assert exc.value.check == "quorum"
    # End to end, without those checks: the committed entry gets lost.
    with pytest.raises(SafetyViolation) as exc:
        figure8(1, disabled=frozenset({"commit-rule", "quorum"}))
    print(exc.value)
    assert exc.value.check == "leader-completeness"


class LazyFollowerDisk(RaftCore):
    """Broken: a follower acknowledges appends at once but writes them only every 4th
    Ready (and applies only what it wrote)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._held: list[Entry] = []
        self._n = 0

    def ready(self) -> Ready:
        rd = super().ready()
        if self.role == Role.LEADER and not self._held:
            return rd
        self._n += 1
        if rd.entries:
            cut = rd.entries[0].index
            self._held = [e for e in self._held if e.index < cut] + rd.entries
        if self._n % 4 == 0 or self.role == Role.LEADER:
            rd.entries, self._held = self._held, []
        else:
            rd.entries = []
            rd.committed = []
            self.log.applying = self.log.applied
        return rd


def test_checkers_catch_ack_before_persist() -> None:
    r = run_seed(1, 3, 300, core_factory=LazyFollowerDisk, **NO_SNAPSHOTS)
    print(r.error)
    assert not r.ok and r.error.startswith("[persistence]")
    # Without the Ready-contract check, the lost acknowledged entries show up end to end.
    # Without it, the leader counts acknowledgements that are on no disk.
    r = run_seed(9, 3, 600, core_factory=LazyFollowerDisk, **NO_SNAPSHOTS,
                 disabled_checks=frozenset({"persistence"}))
    print(r.error)
    assert not r.ok and r.error.startswith("[quorum]")
    r = run_seed(9, 3, 600, core_factory=LazyFollowerDisk, **NO_SNAPSHOTS,
                 disabled_checks=frozenset({"persistence", "quorum"}))
    print(r.error)
    assert not r.ok and r.error.startswith("[leader-completeness]")


class ForgetfulVote(RaftCore):
    """Broken: votes are never written to disk (terms are)."""

    def ready(self) -> Ready:
        rd = super().ready()
        if rd.hard_state is not None:
            rd.hard_state = HardState(rd.hard_state.term, NONE)
        return rd

    def advance(self, rd: Ready) -> None:
        super().advance(rd)
        self.persisted_hard = HardState(self.term, self.vote)


def test_checkers_catch_unpersisted_votes() -> None:
    r = run_seed(1, 3, 300, core_factory=ForgetfulVote, **NO_SNAPSHOTS)
    print(r.error)
    assert not r.ok and r.error.startswith("[persistence]")
    # End to end: a node that forgets its vote across a crash votes twice in a term.
    r = run_seed(3, 3, 600, core_factory=ForgetfulVote, **NO_SNAPSHOTS,
                 disabled_checks=frozenset({"persistence"}), **CHAOS)
    print(r.error)
    assert not r.ok and r.error.startswith("[election-safety]")


def _unconfirmed_read(r: RaftCore, ctx: int, frm: int) -> None:
    """register_read without the quorum round: answers from the local commit index."""
    r.read_seq += 1
    roles._read_confirmed(r, ctx, r.log.committed, frm)


def test_checkers_catch_reads_without_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "register_read", _unconfirmed_read)
    with pytest.raises(SafetyViolation) as exc:
        deposed_leader_read(41, check_quorum=False)
    print(exc.value)
    assert exc.value.check == "linearizable-read"
    r = run_seed(10, 3, 600, **NO_SNAPSHOTS)
    print(r.error)
    assert not r.ok and r.error.startswith("[linearizable-read]")


class NoInstall(RaftCore):
    """Broken: a follower restores its log to a snapshot from the leader but never asks
    for the snapshot to be installed (its state machine is not replaced)."""

    def ready(self) -> Ready:
        self.snapshot_to_install = None
        return super().ready()


SNAP_CHAOS: dict[str, Any] = FOCUS["snap-margin0"]


def test_checkers_catch_snapshots_never_installed() -> None:
    r = run_seed(1, 3, 300, core_factory=NoInstall, **SNAP_CHAOS)
    print(r.error)
    assert not r.ok and r.error.startswith("[persistence]")  # the disk has no snapshot
    r = run_seed(1, 3, 300, core_factory=NoInstall, **SNAP_CHAOS,
                 disabled_checks=frozenset({"persistence"}))
    print(r.error)
    assert not r.ok and r.error.startswith("[state-machine-safety]")  # a gap in applying


def _trusting_snapshot(r: RaftCore, m: Message) -> None:
    """_handle_snapshot that takes any entry at the snapshot's index for a match (the
    term is not compared), so it may commit a stale entry of its own there."""
    s = m.snapshot
    assert s is not None
    log = r.log
    if s.index <= log.committed:
        index = log.committed
    elif log.term(s.index) is not None:
        log.commit_to(s.index)
        index = s.index
    else:
        log.restore(s.index, s.term)
        r.conf = s.conf
        r.snapshot_to_install = r.latest_snapshot = s
        index = s.index
    r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term, index=index))


def test_checkers_catch_a_snapshot_taken_for_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "_handle_snapshot", _trusting_snapshot)
    r = run_seed(1, 3, 600, **SNAP_CHAOS)
    print(r.error)
    assert not r.ok and r.error.startswith("[state-machine-safety]")
    # End to end: a read served by that follower misses an acknowledged write.
    r = run_seed(1, 3, 600, **SNAP_CHAOS, disabled_checks=frozenset({"state-machine-safety"}))
    print(r.error)
    assert not r.ok and r.error.startswith("[linearizable-read]")


# --- membership changes ------------------------------------------------------------------


def _run_membership(seed: int, nodes: int, ticks: int, **overrides: Any) -> Cluster:
    c = _run(seed, nodes, ticks, membership=True, **overrides)
    assert c.events.get("conf-propose", 0) > 0, f"seed {seed} changed no membership"
    return c


@pytest.mark.parametrize("seed,nodes", [(s, 3) for s in range(1, 11)] + [(s, 5) for s in range(1, 5)])
def test_random_profiles_with_membership_changes(seed: int, nodes: int) -> None:
    """The command line's ``--membership`` profile: random membership changes (learners
    added and promoted, voters removed, the leader replaced) under the seed's faults."""
    _run_membership(seed, nodes, 800)


MEMBERSHIP_CHAOS: dict[str, Any] = {**CHAOS, "conf_change_rate": 0.05, "voters_min": 2,
                                    "snapshot_every": 5, "snapshot_margin": 0,
                                    "stream_fail": 0.2, "install_crash": 0.2}


@pytest.mark.parametrize("seed,nodes", [(501, 3), (503, 3), (503, 5), (504, 5)])
def test_membership_changes_under_chaos(seed: int, nodes: int) -> None:
    """Frequent membership changes with crashes, partitions, loss, snapshots (new nodes
    catch up by InstallSnapshot) and leader replacements."""
    c = _run_membership(seed, nodes, 800, **MEMBERSHIP_CHAOS)
    assert c.events.get("node-added", 0) >= 1 and c.events.get("retire", 0) >= 1
    assert len(c.checker.confs) >= 3, "memberships committed"


def test_membership_seeds_replay_exactly() -> None:
    traces: list[list[str]] = [[], []]
    for k in range(2):
        c = make_cluster(8, 3, 400, verbose=2, membership=True, out=traces[k].append)
        c.run()
        traces[k].append(c.summary())
    assert traces[0] == traces[1]
    assert any("OPERATOR" in line for line in traces[0])


class CountsLearners(RaftCore):
    """Broken: learners' copies count toward the commit quorum."""

    def committed_by_quorum(self) -> int:
        from kvraft.raft.quorum import committed_index
        return committed_index(self.conf.all_nodes(),
                               {p: pr.match for p, pr in self.prs.items()})


def test_checkers_catch_learners_counted_in_the_quorum() -> None:
    for seed in range(1, 30):
        r = run_seed(seed, 3, 600, core_factory=CountsLearners, membership=True)
        if not r.ok:
            print(seed, r.error)
            assert r.error.startswith("[quorum]"), r.error
            return
    pytest.fail("no seed caught a core that counts learners")


# --- the command line -----------------------------------------------------------------


def test_cli_runs_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--seeds", "2", "--start", "5", "--ticks", "150"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "2 seeds, 0 failed" in out


def test_cli_replays_one_seed_with_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--seed", "3", "--ticks", "150", "-v"]) == 0
    out = capsys.readouterr().out
    assert "becomes LEADER" in out and out.splitlines()[-1].startswith("OK seed=3")


def test_cli_exits_non_zero_on_failure(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    real: Callable[..., Any] = runner.run_seed

    def broken(*args: Any, **kw: Any) -> Any:
        return real(*args, core_factory=ForgetfulVote, **kw)

    monkeypatch.setattr(runner, "run_seed", broken)
    assert runner.main(["--seeds", "2", "--start", "1", "--ticks", "150"]) == 1
    out = capsys.readouterr().out
    assert "FAIL seed=1" in out and "2 seeds, 2 failed" in out
