"""Parameters of one simulation run, and the per-seed random fault profile.

Every probability and delay of the simulated world is a field of :class:`SimConfig`.
:func:`profile_for_seed` draws a profile from the seed itself, so that a run of many
seeds explores many mixes of faults and timings while any one seed still replays
exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace
from typing import Any

STEPS_PER_TICK = 10
"""Sub-tick resolution of simulated time: messages and disk writes complete at steps."""

FAULT_KINDS = ("crash", "split", "isolate", "oneway", "partial", "loss", "dup", "reorder",
               "transfer")
"""Every fault the simulator can inject (names usable in ``SimConfig.faults``)."""


_SNAPSHOT_FIELDS = frozenset({"snapshot_margin", "snapshot_take_max", "snapshot_keep",
                              "stream_delay_max", "stream_fail", "install_crash"})
_MEMBERSHIP_FIELDS = frozenset({"voters_min", "voters_max", "retire_ticks_max"})


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 3
    ticks: int = 1000
    """Ticks of faulty operation; the heal-and-settle phase comes after."""

    # --- Raft configuration of every replica ---------------------------------------
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight_msgs: int = 256
    max_msg_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True

    # --- timing (in steps; STEPS_PER_TICK steps make one tick) -----------------------
    msg_delay_min: int = 1
    msg_delay_max: int = 8
    persist_delay_max: int = 8
    """A Ready that writes something completes 1..persist_delay_max steps after ready()."""

    # --- network faults -------------------------------------------------------------
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    """Probability that a message is held back by up to ``reorder_delay_max`` more steps."""
    reorder_delay_max: int = 30
    partition_rate: float = 0.0
    """Per-tick probability of starting a partition (when none is active)."""
    partition_ticks_max: int = 60
    faults: frozenset[str] = frozenset()
    """Enabled fault kinds, a subset of FAULT_KINDS."""

    # --- node faults ----------------------------------------------------------------
    crash_rate: float = 0.0
    """Per-tick probability of crashing one node (at a random step of the tick)."""
    crash_after_write: float = 0.0
    """Probability that a node crashes right after a Ready's write and sends complete."""
    down_ticks_max: int = 40
    """Half of the crashes last up to election_ticks / 2 ticks, the rest up to this."""
    leader_bias: float = 0.5
    """Probability that a crash or isolation picks a leader when there is one."""
    apply_sync: float = 1.0
    """Probability that the applied index is made durable after applying a batch."""
    transfer_rate: float = 0.0

    # --- snapshots and log compaction -------------------------------------------------
    snapshot_every: int = 0
    """Each node snapshots its state machine once this many entries were applied since
    its last snapshot (0: never, and the log is never compacted)."""
    snapshot_margin: int = 0
    """Entries kept below a new snapshot for slightly lagging followers: the log is
    compacted to max(current compaction point, snapshot index - margin)."""
    snapshot_take_max: int = 20
    """Taking a snapshot (copy, write, record, compact) completes 0..this many steps after
    the applied index it covers was reached; the node keeps running meanwhile."""
    snapshot_keep: int = 2
    """Snapshot files a node keeps after taking one: the newest by index, as the
    runtime's ``prune``, plus the one recorded with the log; received files are kept
    until then."""
    stream_delay_max: int = 30
    """Streaming a snapshot to a follower completes (or fails) 1..this many steps later."""
    stream_fail: float = 0.0
    """Probability that a snapshot stream fails (with the ``loss`` fault, while faulty)."""
    install_crash: float = 0.0
    """Probability that a node crashes while installing a snapshot from its leader, after
    its disk recorded the snapshot and before its state machine was replaced (with the
    ``crash`` fault, while faulty)."""

    # --- membership changes -----------------------------------------------------------
    conf_change_rate: float = 0.0
    """Per-tick probability (while faulty) that the operator starts a membership change:
    add a learner (a new node id, started with an empty membership), promote a learner,
    remove a voter or a learner, replace the leader (add, promote, remove the leader),
    or remove a voter and add it back under a new id. 0: the membership never changes
    (and the world's random stream is the same as before membership was simulated)."""
    voters_min: int = 1
    """The operator never removes a voter from a group of this many voters."""
    voters_max: int = 5
    """The operator never promotes a learner into a group of this many voters."""
    retire_ticks_max: int = 100
    """A removed node keeps running (it does not know it was removed) for up to this many
    ticks after its removal is committed, then it is shut down for good."""

    # --- clients --------------------------------------------------------------------
    propose_rate: float = 0.5
    """Mean proposals per tick."""
    read_rate: float = 0.2
    """Mean read_index calls per tick."""
    follower_reads: float = 0.0
    """Share of reads sent to a follower, which forwards them to its leader (a follower
    read) and serves them from its own state machine; 0 sends none."""

    # --- checking -------------------------------------------------------------------
    liveness_factor: int = 10
    """After the heal, a proposal must commit within liveness_factor * election_ticks."""
    full_check_every: int = 100
    """Ticks between full scans: log matching over every log, and ``check_invariants()``
    of every core over its whole log (incremental checks run after every operation)."""
    disabled_checks: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        """A compact one-line description of the non-default parameters."""
        default = SimConfig()
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if not self.snapshot_every and f.name in _SNAPSHOT_FIELDS:
                continue  # irrelevant without snapshots
            if not self.conf_change_rate and f.name in _MEMBERSHIP_FIELDS:
                continue  # irrelevant without membership changes
            if v != getattr(default, f.name):
                if isinstance(v, frozenset):
                    v = ",".join(sorted(v)) or "-"
                elif isinstance(v, float):
                    v = f"{v:.3g}"
                parts.append(f"{f.name}={v}")
        return " ".join(parts)

    def calm(self) -> SimConfig:
        """The same world with every fault and the random clients switched off."""
        return replace(self, faults=frozenset(), crash_rate=0.0, crash_after_write=0.0,
                       partition_rate=0.0, stream_fail=0.0, install_crash=0.0,
                       loss=0.0, dup=0.0, transfer_rate=0.0, propose_rate=0.0, read_rate=0.0,
                       conf_change_rate=0.0)


def snapshot_rng(seed: int) -> random.Random:
    """The generator the snapshot parameters of a seed's profile are drawn from.

    It is separate from the world's generator so that a seed run with snapshots off
    (``snapshot_every=0``) replays exactly as it did before snapshots were simulated.
    """
    return random.Random(seed * 1_000_003 + 0x5A)


def membership_rng(seed: int) -> random.Random:
    """The generator the membership parameters of a seed's profile are drawn from (kept
    apart for the same reason as :func:`snapshot_rng`)."""
    return random.Random(seed * 1_000_033 + 0xC0)


def profile_for_seed(rng: random.Random, nodes: int, ticks: int, *,
                     snap_rng: random.Random | None = None,
                     member_rng: random.Random | None = None,
                     **overrides: Any) -> SimConfig:
    """Draw a random fault/timing profile from ``rng`` (the world's generator).

    The snapshot parameters are drawn from ``snap_rng`` (see :func:`snapshot_rng`);
    without it snapshots stay off. The membership parameters are drawn from
    ``member_rng`` (see :func:`membership_rng`); without it the membership never
    changes. ``overrides`` replace drawn fields; passing ``faults`` restricts the fault
    kinds.
    """
    faults = frozenset(k for k in FAULT_KINDS if rng.random() < 0.6)
    if not faults:
        faults = frozenset({rng.choice(FAULT_KINDS)})
    election = rng.randint(6, 15)
    inflight = rng.choice((1, 2, 4, 16, 256))
    msg_bytes = rng.choice((64, 256, 1 << 20))
    if inflight * msg_bytes < 512:
        # Keep the replication capacity (entries per round trip) above the client load;
        # an overloaded leader is slow, not broken.
        msg_bytes = 512
    cfg = SimConfig(
        nodes=nodes,
        ticks=ticks,
        election_ticks=election,
        heartbeat_ticks=rng.randint(1, max(1, election // 4)),
        max_inflight_msgs=inflight,
        max_msg_bytes=msg_bytes,
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        msg_delay_min=rng.randint(0, 2),
        msg_delay_max=rng.randint(3, 15),
        persist_delay_max=rng.randint(1, 20),
        loss=rng.uniform(0.01, 0.2),
        dup=rng.uniform(0.01, 0.15),
        reorder=rng.uniform(0.01, 0.2),
        reorder_delay_max=rng.randint(5, 4 * STEPS_PER_TICK),
        partition_rate=rng.uniform(0.005, 0.03),
        partition_ticks_max=rng.randint(election, 8 * election),
        crash_rate=rng.uniform(0.002, 0.03),
        crash_after_write=rng.choice((0.0, rng.uniform(0.0005, 0.005))),
        down_ticks_max=rng.randint(1, 5 * election),
        leader_bias=rng.random(),
        apply_sync=rng.choice((1.0, 1.0, rng.uniform(0.1, 0.9))),
        transfer_rate=rng.uniform(0.002, 0.01),
        propose_rate=rng.uniform(0.1, 1.5),
        read_rate=rng.uniform(0.0, 0.6),
        faults=faults,
    )
    if snap_rng is not None:
        cfg = replace(cfg, **snapshot_profile(snap_rng))
    if member_rng is not None:
        cfg = replace(cfg, **membership_profile(member_rng, nodes, cfg.election_ticks))
    return replace(cfg, **overrides) if overrides else cfg


def snapshot_profile(rng: random.Random) -> dict[str, Any]:
    """Snapshot parameters: on in about 70% of the seeds, often frequent enough (and with
    a small enough margin) that a follower missing a few ticks needs InstallSnapshot."""
    if rng.random() >= 0.7:
        return {"snapshot_every": 0}
    every = rng.choice((3, 5, 10, 20, 50, 100))
    return {
        "snapshot_every": every,
        "snapshot_margin": rng.choice((0, 0, 1, 3, every // 2, every, 4 * every)),
        "snapshot_take_max": rng.randint(0, 3 * STEPS_PER_TICK),
        "snapshot_keep": rng.choice((1, 2, 2)),
        "stream_delay_max": rng.randint(1, 6 * STEPS_PER_TICK),
        "stream_fail": rng.choice((0.0, rng.uniform(0.05, 0.4))),
        "install_crash": rng.choice((0.0, rng.uniform(0.05, 0.5))),
    }


def membership_profile(rng: random.Random, nodes: int, election_ticks: int) -> dict[str, Any]:
    """Membership parameters: a change started every 20 to 200 ticks, groups kept
    between 1..3 and 3..6 voters, removed nodes left running for up to 0..20 election
    timeouts."""
    lo = rng.choice((1, 2, 3, 3))
    return {
        "conf_change_rate": rng.uniform(0.005, 0.05),
        "voters_min": lo,
        "voters_max": max(lo, rng.choice((3, 4, 5, 5, 6))),
        "retire_ticks_max": rng.randint(0, 20 * election_ticks),
    }
