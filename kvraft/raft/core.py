"""RaftCore: a pure, deterministic Raft state machine (messages in, work out).

The core never performs I/O, reads a clock or draws randomness of its own: time is
``tick()``, randomness comes from the ``rng`` passed in, and all work it wants done
(persisting, sending, applying) is returned by ``ready()`` as a :class:`Ready`, whose
docstring states the ordering contract. This is the design of etcd-io/raft's RawNode.

Features: randomized election timeouts, pre-vote, check-quorum with leader leases
(a partitioned node rejoining cannot depose a healthy leader), batched and pipelined
replication with a bounded in-flight window, fast conflict backtracking, commit of
current-term entries only, ReadIndex reads confirmed by a quorum (batched: one round
of acknowledgements confirms every read registered before it), leadership transfer,
snapshot hand-off, learners, and single-server membership changes.

Membership (Raft thesis 4.1, see DESIGN.md): a CONF entry carries the whole new
:class:`ConfState`. A replica uses the newest membership in its log, committed or
not, from the moment the entry is appended; a truncated entry takes its membership
with it. Every quorum (commit, votes, ReadIndex, check-quorum) is computed over that
one ``conf``. A leader proposes a change only when the previous one is committed and
it has committed an entry of its own term, and a change adds or removes at most one
voter, so any two majorities of consecutive memberships overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvraft.raft import roles
from kvraft.raft.errors import InvariantViolation, NotLeader, ProposalDropped
from kvraft.raft.log import RaftLog
from kvraft.raft.progress import Inflights, Progress, ProgressState
from kvraft.raft.quorum import VoteResult, committed_index, majority, vote_result
from kvraft.raft.roles import PendingRead
from kvraft.raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)


class Rng(Protocol):
    """The slice of ``random.Random`` the core uses."""

    def randrange(self, start: int, stop: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class Config:
    """Tunables of one replica. Time is counted in ticks."""

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 64 << 20
    max_apply_bytes: int = 64 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    vote_lease: bool = False
    """With check_quorum: a replica ignores (pre-)votes of higher terms for
    ``election_ticks`` ticks after it last heard from a leader, and after it started,
    whatever its term or leader since (a higher-term answer clears ``leader``). Leader
    leases (``kvraft.runtime.lease``) rest on it; without it, only a replica that still
    has a leader and heard from it within the election timeout ignores votes."""

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be a positive integer")
        if self.heartbeat_ticks <= 0 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")


@dataclass(slots=True)
class InitialState:
    """What a replica restarts from: its durable state (or a fresh bootstrap)."""

    conf: ConfState
    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    """The newest snapshot the replica holds durably (it can send it to followers)."""
    entries: Sequence[Entry] = ()
    applied: int = 0
    log_start: tuple[int, int] | None = None
    """(index, term) of the entry before ``entries[0]`` (the compaction point, at or
    below the snapshot); defaults to the snapshot's (index, term), else (0, 0)."""

    # ``conf`` is the membership at the snapshot (or the bootstrap membership without
    # one); CONF entries in ``entries`` after the snapshot override it. A node that
    # joins an existing group starts with no voters and waits to be added.


@dataclass(slots=True)
class Status:
    id: int
    role: Role
    term: int
    vote: int
    leader: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    progress: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    """For a leader: peer -> (match, next, state)."""
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    pending_conf_index: int = 0
    """Index of the newest membership entry in the log (0: none since the snapshot)."""
    campaigns: int = 0


@dataclass(frozen=True, slots=True)
class ConfHistory:
    """The memberships of a log: ``base`` until the first of ``points`` (index, conf)."""

    base: ConfState
    points: tuple[tuple[int, ConfState], ...]
    base_index: int = 0
    """``base`` is known to be in force from here; below it the membership is unknown."""

    def known(self, index: int) -> bool:
        """Is the membership at ``index`` known here? Not below a snapshot that replaced
        the log, and not for a node that joined with no membership before it holds its
        first membership entry."""
        return index >= self.base_index and bool(self(index).voters)

    def __call__(self, index: int) -> ConfState:
        conf = self.base
        for idx, c in self.points:
            if idx > index:
                break
            conf = c
        return conf


class RaftCore:
    """One replica's Raft state machine. See the module docstring."""

    def __init__(self, config: Config, rng: Rng, state: InitialState) -> None:
        self.cfg = config
        self.id = config.id
        self.rng = rng
        snap = state.snapshot
        start = state.log_start or ((snap.index, snap.term) if snap else (0, 0))
        self.log = RaftLog(
            snapshot_index=start[0],
            snapshot_term=start[1],
            entries=state.entries,
            applied=state.applied,
        )
        self.latest_snapshot = snap
        self.conf = state.conf
        self._base_conf = state.conf
        self._base_index = snap.index if snap else start[0]
        self._conf_points: list[tuple[int, int, ConfState]] = []
        """(index, term, membership) of each CONF entry after ``_base_index``."""
        self.step_down_pending = False
        self.ticks = 0
        self.leader_contact = 0 if config.vote_lease else -config.election_ticks
        """``ticks`` when this replica last heard from a leader (or started)."""
        self.leaving: set[int] = set()
        self.leaving_for = 0
        """Ticks since the removal of the ``leaving`` nodes committed."""
        """Nodes a leader still replicates to after removing them, until the removal
        commits: a removed node that gets its removal entry stops campaigning."""
        self.campaigns = 0
        """(Pre-)campaigns this replica started since it was created (for status)."""
        self.term = state.hard_state.term
        self.vote = state.hard_state.vote
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.votes: dict[int, bool] = {}
        self.prs: dict[int, Progress] = {}
        self.msgs: list[Message] = []
        self.read_seq = 0
        self.pending_reads: deque[PendingRead] = deque()
        self.reads_before_commit: list[tuple[int, int]] = []
        """(ctx, asking node) of reads waiting for this leader's first commit."""
        self.forwarded_reads: dict[int, int] = {}
        """A follower's reads sent to its leader: ctx -> ``ticks`` when sent."""
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[int] = []
        self.bcast_pending = False
        self.read_bcast_pending = False
        self.transferee = NONE
        self.transfer_elapsed = 0
        self.transfer_term = 0
        """The last term in which this replica, as leader, began handing leadership over
        (a TimeoutNow it sent lets its target's votes override the followers' leases)."""
        self.snapshot_to_install: SnapshotMeta | None = None
        self.persisted_hard = HardState(self.term, self.vote)
        self.reported_soft = SoftState(NONE, Role.FOLLOWER, self.term)
        self._reset_randomized_timeout()
        self.note_entries(state.entries)

    # --- public API ---------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self.ticks += 1
        if self.role == Role.LEADER:
            roles.tick_leader(self)
        else:
            if self.forwarded_reads:
                roles.expire_forwarded_reads(self)
            roles.tick_election(self)

    def step(self, m: Message) -> None:
        """Feed one message received from a peer."""
        roles.step(self, m)

    def propose(self, data: bytes, kind: int = EntryKind.NORMAL) -> tuple[int, int]:
        """Append a command to the leader's log; returns its (index, term).

        The command is committed once a quorum has it durably; it may still be lost if
        leadership changes first (the entry at ``index`` then has another term).
        Raises NotLeader on a non-leader, ProposalDropped during a transfer.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader, self.term)
        if self.transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.transferee} in progress")
        entry = Entry(self.log.last_index() + 1, self.term, data, kind)
        self.append_local([entry])
        return entry.index, entry.term

    def propose_conf(self, conf: ConfState) -> tuple[int, int]:
        """Propose the membership ``conf`` (the whole new one); returns its (index, term).

        Single-server changes only: at most one voter added or removed (learners may
        change freely), no change while another is uncommitted, and none before this
        leader has committed an entry of its own term. Raises ValueError for a change
        that breaks those rules, ProposalDropped for one that must wait.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader, self.term)
        if not conf.voters:
            raise ValueError("a group needs at least one voter")
        if conf.voters & conf.learners:
            raise ValueError(f"nodes {sorted(conf.voters & conf.learners)} cannot be both "
                             "voters and learners")
        changed = conf.voters ^ self.conf.voters
        if len(changed) > 1:
            raise ValueError(f"one voter at a time: this change adds or removes "
                             f"{sorted(changed)}")
        if self.log.term(self.log.committed) != self.term:
            raise ProposalDropped("the new leader has not committed an entry of its term yet")
        if self.pending_conf_index() > self.log.committed:
            raise ProposalDropped(f"the membership change at index {self.pending_conf_index()} "
                                  "is not committed yet")
        live = self.live_voters(conf.voters)
        if len(live) < majority(len(conf.voters)):
            # The change takes effect on append: without a live quorum of the new voters
            # it could never commit, and no other change could be made to repair it.
            raise ProposalDropped(
                f"the new voters {sorted(conf.voters)} would have no live majority (live: "
                f"{sorted(live)}); bring members back or remove the unreachable ones first")
        return self.propose(conf.encode(), EntryKind.CONF)

    def live_voters(self, voters: frozenset[int]) -> set[int]:
        """The ``voters`` this leader heard from within an election timeout (itself too)."""
        out = set()
        for p in voters:
            pr = self.prs.get(p)
            if p == self.id or (pr is not None and pr.heard_at > 0
                                and self.ticks - pr.heard_at <= self.cfg.election_ticks):
                out.add(p)
        return out

    def pending_conf_index(self) -> int:
        return self._conf_points[-1][0] if self._conf_points else 0

    def conf_at(self, index: int) -> ConfState:
        """The membership in force at log ``index`` (for a snapshot taken there)."""
        return self.conf_history()(index)

    def conf_history(self) -> ConfHistory:
        """A frozen copy of the memberships in the log, safe to use from another thread."""
        return ConfHistory(self._base_conf, tuple((i, c) for i, _, c in self._conf_points),
                           self._base_index)

    def read_index(self, ctx: int, *, forward: bool = False) -> None:
        """Ask to serve a linearizable read identified by ``ctx``.

        The read appears in ``Ready.read_states`` as (ctx, index) once a quorum has
        confirmed this replica still leads, with ``index`` = the commit index when the
        read was registered; serve it once the applied index reaches ``index``.
        If leadership is lost first, ``ctx`` appears in ``Ready.dropped_reads``.

        ``forward``: on a follower (or learner) that knows its leader, ask the leader
        for the index instead (a follower read): the leader runs the same quorum round
        and answers with its commit index, and this replica serves the read from its own
        state once it has applied that far. It is dropped if the leader refuses, if this
        replica's term or leader changes, or if no answer comes within an election
        timeout. Raises NotLeader when there is no leader to ask.
        """
        if self.role != Role.LEADER:
            if not forward or self.leader == NONE or self.role != Role.FOLLOWER:
                raise NotLeader(self.leader, self.term)
            self.forwarded_reads[ctx] = self.ticks
            self.send(Message(MsgType.READ_INDEX, to=self.leader, frm=self.id,
                              term=self.term, ctx=ctx))
            return
        if self.log.term(self.log.committed) != self.term:
            self.reads_before_commit.append((ctx, self.id))
            return
        roles.register_read(self, ctx, self.id)

    def answer_read_index(self, m: Message, index: int) -> bool:
        """Answer a follower's ``READ_INDEX`` at once with ``index``, without a quorum
        round: for a runtime that holds a leader lease (``lease_may_hold`` and its own
        clock) and took ``index`` = ``log.committed`` before it read that clock. False
        (nothing sent) when the message is not one this leader may answer so; the
        runtime then steps it as usual."""
        if (m.type != MsgType.READ_INDEX or m.term != self.term or m.frm not in self.prs
                or m.frm == self.id or not self.lease_may_hold()):
            return False
        self.send(Message(MsgType.READ_INDEX_RESP, to=m.frm, frm=self.id, term=self.term,
                          ctx=m.ctx, index=index))
        return True

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to ``target`` once it is caught up (best effort)."""
        roles.transfer_leadership(self, target)

    def lease_may_hold(self) -> bool:
        """Whether a leader lease (see ``kvraft.runtime.lease``) may be in force now.

        True while this replica leads, has committed an entry of its term (its commit
        index then covers every write acknowledged before), and has not begun handing
        leadership over in this term: the TimeoutNow of a transfer lets its target
        be elected at once, whatever the followers' leases. The runtime adds the timing.
        """
        return (self.role == Role.LEADER and self.transfer_term != self.term
                and self.log.term(self.log.committed) == self.term)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The runtime finished (or failed) streaming a snapshot to ``peer``."""
        pr = self.prs.get(peer)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the follower's answer or the next heartbeat

    def report_unreachable(self, peer: int) -> None:
        """The transport could not deliver to ``peer``: stop streaming optimistically."""
        pr = self.prs.get(peer)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def compact(self, index: int) -> None:
        """Drop the log up to ``index`` (applied, durable, and covered by a snapshot)."""
        if self.latest_snapshot is None or index > self.latest_snapshot.index:
            raise InvariantViolation(f"compacting to {index} beyond the newest snapshot")
        self.log.compact(index)
        pts = self._conf_points
        while pts and pts[0][0] <= index:
            self._base_conf = pts.pop(0)[2]
            self._base_index = index

    def set_latest_snapshot(self, snap: SnapshotMeta) -> None:
        """The runtime now holds ``snap`` durably; lagging followers are sent this one."""
        if self.latest_snapshot is None or snap.index > self.latest_snapshot.index:
            self.latest_snapshot = snap

    def has_ready(self) -> bool:
        log = self.log
        return bool(
            self.msgs
            or self.step_down_pending
            or self.bcast_pending
            or self.read_bcast_pending
            or self.read_states
            or self.dropped_reads
            or self.snapshot_to_install
            or max(log.stable, log.persisting) < log.last_index()
            or log.applying < log.committed
            or HardState(self.term, self.vote) != self.persisted_hard
            or self._soft() != self.reported_soft
        )

    def ready(self) -> Ready:
        """Collect the pending work; see :class:`Ready` for the ordering contract."""
        if self.bcast_pending:
            self.bcast_pending = False
            roles.bcast_append(self)
        if self.read_bcast_pending:
            self.read_bcast_pending = False
            roles.bcast_heartbeat(self)
        if self.step_down_pending:
            self.step_down_pending = False
            if self.role == Role.LEADER:
                roles.step_down_removed(self)
        rd = Ready()
        hs = HardState(self.term, self.vote)
        if hs != self.persisted_hard:
            rd.hard_state = hs
        rd.snapshot = self.snapshot_to_install
        rd.entries = self.log.unstable_entries()
        rd.messages, self.msgs = self.msgs, []
        rd.committed = self.log.committed_to_apply(self.cfg.max_apply_bytes)
        rd.read_states, self.read_states = self.read_states, []
        rd.dropped_reads, self.dropped_reads = self.dropped_reads, []
        soft = self._soft()
        if soft != self.reported_soft:
            rd.soft_state = self.reported_soft = soft
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime has done everything ``rd`` asked for."""
        if rd.hard_state is not None:
            self.persisted_hard = rd.hard_state
        if rd.snapshot is not None and rd.snapshot == self.snapshot_to_install:
            self.snapshot_to_install = None
        if rd.entries:
            # All of rd.entries are durable now, but a conflicting append may have
            # replaced a suffix of them in memory meanwhile: the last one still in the log
            # is what became stable (not stable_to(last) alone, which would leave
            # ``stable`` below entries applied from this Ready and make compact() fail).
            for e in reversed(rd.entries):
                if self.log.match_term(e.index, e.term):
                    self.log.stable_to(e.index, e.term)
                    break
        if rd.committed:
            self.log.applied_to(rd.committed[-1].index)
        if self.role == Role.LEADER:
            pr = self.prs[self.id]
            if pr.maybe_update(self.log.stable):
                roles.maybe_commit(self)

    def status(self) -> Status:
        st = Status(
            id=self.id, role=self.role, term=self.term, vote=self.vote, leader=self.leader,
            commit=self.log.committed, applied=self.log.applied,
            last_index=self.log.last_index(), snapshot_index=self.log.snapshot_index,
            voters=tuple(sorted(self.conf.voters)), learners=tuple(sorted(self.conf.learners)),
            pending_conf_index=self.pending_conf_index(), campaigns=self.campaigns,
        )
        if self.role == Role.LEADER:
            st.progress = {p: (pr.match, pr.next, pr.state.name) for p, pr in self.prs.items()}
        return st

    # --- helpers used by the role handlers ------------------------------------------

    def send(self, m: Message) -> None:
        self.msgs.append(m)

    def append_local(self, entries: list[Entry]) -> None:
        """Leader appends its own entries; it counts itself once they are durable."""
        self.log.append(entries)
        self.bcast_pending = True
        self.note_entries(entries)

    def note_entries(self, entries: Sequence[Entry]) -> None:
        """The log changed (``entries`` appended, maybe a suffix replaced): track CONF."""
        pts = self._conf_points
        changed = False
        while pts and not self.log.match_term(pts[-1][0], pts[-1][1]):
            pts.pop()  # truncated: its membership goes with it
            changed = True
        for e in entries:
            if (e.kind == EntryKind.CONF and e.index > self._base_index
                    and (not pts or e.index > pts[-1][0])
                    and self.log.match_term(e.index, e.term)):
                try:
                    conf = ConfState.decode(e.data)
                except ValueError as err:
                    raise InvariantViolation(f"membership entry {e.index}: {err}") from None
                pts.append((e.index, e.term, conf))
                changed = True
        if changed:
            self.set_conf(pts[-1][2] if pts else self._base_conf)

    def restore_conf(self, index: int, conf: ConfState) -> None:
        """The log was replaced by a snapshot at ``index`` whose membership is ``conf``."""
        self._conf_points = []
        self._base_conf = conf
        self._base_index = index
        self.set_conf(conf)

    def set_conf(self, conf: ConfState) -> None:
        """Switch to ``conf`` now (it is the newest membership in the log)."""
        if conf == self.conf:
            return
        old, self.conf = self.conf, conf
        if self.role != Role.LEADER:
            return
        self.leaving = (self.leaving | (old.all_nodes() - conf.all_nodes())) - conf.all_nodes()
        self.leaving.discard(self.id)
        self.leaving_for = 0
        members = conf.all_nodes() | {self.id} | self.leaving
        for p in list(self.prs):
            if p not in members:
                del self.prs[p]
        last = self.log.last_index()
        for p in members:
            if p not in self.prs:
                self.prs[p] = Progress(match=0, next=last + 1, recent_active=True,
                                       heard_at=self.ticks,
                                       inflights=Inflights(self.cfg.max_inflight_msgs,
                                                           self.cfg.max_inflight_bytes))
        if self.transferee not in conf.voters:
            self.transferee = NONE
        roles.maybe_commit(self)  # the quorum changed
        roles.recheck_reads(self)

    def quorum(self) -> int:
        return majority(len(self.conf.voters))

    def committed_by_quorum(self) -> int:
        return committed_index(self.conf.voters, {p: pr.match for p, pr in self.prs.items()})

    def vote_outcome(self) -> VoteResult:
        return vote_result(self.conf.voters, self.votes)

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.leaving = set()
        self.leaving_for = 0
        self.transferee = NONE
        self.bcast_pending = False
        self.read_bcast_pending = False
        self._drop_reads()
        last = self.log.last_index()
        self.prs = {}
        for p in self.conf.all_nodes() | {self.id}:
            pr = Progress(match=0, next=last + 1, inflights=Inflights(
                self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes))
            if p == self.id:
                pr.match = self.log.stable
            self.prs[p] = pr

    def _drop_reads(self) -> None:
        # Reads other replicas forwarded are dropped silently: each of them drops its
        # own when its term or leader changes, or after an election timeout.
        self.dropped_reads.extend(r.ctx for r in self.pending_reads if r.frm == self.id)
        self.dropped_reads.extend(c for c, frm in self.reads_before_commit if frm == self.id)
        self.dropped_reads.extend(self.forwarded_reads)
        self.pending_reads.clear()
        self.reads_before_commit = []
        self.forwarded_reads = {}

    def _reset_randomized_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_timeout = e + self.rng.randrange(0, e)

    def _soft(self) -> SoftState:
        return SoftState(self.leader, self.role, self.term)

    def promotable(self) -> bool:
        """May this replica campaign? If it is a voter in the newest membership in its
        log, or in the newest committed one. The second case is a node whose removal is
        in its log but not committed: the voters left may need it to lead (its log can
        be the only complete one) to commit that removal; it counts votes over its newest
        membership, as every candidate does, and steps down once the removal commits.
        A node that knows its removal is committed never campaigns again."""
        if self.id in self.conf.voters:
            return True
        return bool(self._conf_points) and self.id in self.conf_at(self.log.committed).voters

    def add_read_state(self, ctx: int, index: int) -> None:
        self.read_states.append(ReadState(ctx, index))

    def check_invariants(self) -> None:
        self.log.check_invariants()
        if self.role == Role.LEADER and self.leader != self.id:
            raise InvariantViolation("leader does not name itself")

