"""Safety checkers, run continuously while the simulation runs.

Each check has a name (used in failure messages and in ``SimConfig.disabled_checks``):

- ``invariants``: the invariants of ``RaftCore.check_invariants()`` after every tick,
  step, proposal, read, ``ready()`` and ``advance()`` (checked incrementally: only the
  entries appended since the last check are scanned; the full ``check_invariants()``
  runs on every core at each full scan, every ``full_check_every`` ticks and at the
  end); applied entries are stable (``applied <= stable``); terms never decrease
  within a lifetime.
- ``election-safety``: at most one leader per term over the whole run.
- ``log-matching``: two logs (in memory or durable, of any node, at any time) holding
  an entry with the same index and term hold the same entry and agree on the term of
  the entry before it, hence on the whole prefix. Checked on every Ready and by
  periodic full scans. Entries below a log's compaction point count as present with
  the content of the snapshot covering them (see ``snapshots``).
- ``commit-rule``: a leader's commit index only advances onto an entry of its term;
  a follower never commits past what some leader committed.
- ``leader-completeness``: every committed entry is in the log of every leader of a
  later term, or covered by its snapshot (checked at election and whenever a leader
  commits).
- ``state-machine-safety``: no two nodes (or two lifetimes of one node) apply
  different entries at one index; entries are applied in order, once per lifetime,
  only once committed and durable locally; a payload is applied at most once; every
  snapshot (taken or installed) is exactly the committed prefix up to its index, so
  a state machine replaced by a snapshot equals the applied prefix of every node.
- ``persistence``: the Ready contract as seen from the disk: the hard state never
  goes back (term, vote within a term), the durable log after a write equals the
  core's log when the Ready was taken, committed or compacted entries are never
  overwritten, a snapshot to install was received first, a restart behind the log
  finds the recorded snapshot.
- ``membership``: every replica, after every operation, uses exactly the membership
  its own log says: the newest CONF entry in its log, else the membership of the
  committed log at its compaction point (the bootstrap one, or for a node that joined,
  its empty one, when it has no snapshot). So every quorum a leader or candidate
  computes is over a membership that is in its log, which the single-server rule
  relies on. Every snapshot carries the membership of the committed log at its index.
- ``quorum``: no two disjoint majorities ever decide. Commit decisions and election
  wins are re-derived from durable state, not from the core's bookkeeping:

  * a leader advancing its commit index to ``i`` (an entry of its term ``T``) must have
    a majority of its voters ``V`` holding ``i@T`` on their disks (or compacted past
    it). An acknowledgement is only sent once durable, and an entry acknowledged in
    term ``T`` cannot be dropped before the leader counts it unless a later leader
    lacking it was elected by a majority disjoint from the acknowledging one; so in a
    correct Raft the durable holders include the true acknowledging set.
  * a candidate winning term ``T`` must have granted votes from a majority of its
    voters, and, for the newest entry committed in a term below ``T``, one of those
    voters must hold it (in memory or on disk, or compacted past it). A vote is only
    sent once the voter's log up to then is durable, so this says the election
    majority and the majority that committed the entry intersect (the heart of Leader
    Completeness across membership changes: consecutive single-server memberships
    have overlapping majorities, and a leader only changes once the previous change
    is committed). A core that counts a learner or a removed node, changes two voters
    at once or a second time before the first change commits, fails it.
- ``linearizable-read`` / ``durability`` / ``liveness``: checked by the client and the
  cluster (see ``client.py`` and ``cluster.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from kvraft.raft import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MsgType,
    RaftCore,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
)
from kvraft.sim.node import is_command

if TYPE_CHECKING:
    from kvraft.sim.cluster import Cluster
    from kvraft.sim.node import SimNode, SnapData


class SafetyViolation(AssertionError):
    """A checker found a broken safety (or liveness) property."""

    def __init__(self, check: str, seed: int, tick: float, message: str) -> None:
        super().__init__(f"[{check}] seed={seed} tick={tick}: {message}")
        self.check = check
        self.seed = seed
        self.tick = tick
        self.detail = message


class Checker:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.disabled = cluster.cfg.disabled_checks
        self.leaders: dict[int, int] = {}
        """term -> the node that led it."""
        self.seen: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        """(index, term) -> (data, kind, term of the previous entry), over all logs ever."""
        self.committed: list[Entry] = []
        """The committed log as established by leaders' commit indexes (entry k+1 at k)."""
        self.commit_term: list[int] = []
        """The term of the leader that first committed each index (non-decreasing)."""
        self.applied_at: dict[int, Entry] = {}
        self.commit_seen: dict[int, int] = {}
        self.term_seen: dict[int, int] = {}
        self.role_seen: dict[int, Role] = {}
        self.snapshots: dict[tuple[int, int], SnapData] = {}
        """(index, term) -> the content of every snapshot taken, checked on creation."""
        self._scanned: dict[int, tuple[list[Entry], int, int, Entry | None, int,
                                       ConfState | None]] = {}
        """node -> (its log's entry list, snapshot index, entries checked, last checked,
        position of the newest CONF entry among them or -1, its membership)."""
        self.confs: list[tuple[int, ConfState]] = [
            (0, ConfState(frozenset(range(1, cluster.cfg.nodes + 1))))]
        """The committed memberships: (index of the CONF entry, membership), the
        bootstrap one at 0."""
        self.cand_votes: dict[int, tuple[int, frozenset[int]]] = {}
        """candidate -> (term, the nodes that granted it a vote so far)."""

    def committed_conf(self) -> ConfState:
        return self.confs[-1][1]

    def conf_at_committed(self, index: int) -> ConfState:
        """The membership of the committed log at ``index``."""
        for at, conf in reversed(self.confs):
            if at <= index:
                return conf
        raise AssertionError("the bootstrap membership is at index 0")

    def fail(self, check: str, message: str) -> None:
        if check in self.disabled:
            return
        c = self.cluster
        raise SafetyViolation(check, c.seed, c.now_ticks(), message)

    # --- after every operation on a core ------------------------------------------------

    def after_op(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        nid = node.id
        self._check_invariants(nid, core)
        self._check_conf(node, core)
        term = core.term
        if term < self.term_seen.get(nid, 0):
            self.fail("invariants", f"n{nid}: term went back from {self.term_seen[nid]} to {term}")
        self.term_seen[nid] = term
        role = core.role
        if role == Role.LEADER:
            other = self.leaders.get(term)
            if other is None:
                self.leaders[term] = nid
                self._check_election(node)
                self._check_new_leader(node)
            elif other != nid:
                self.fail("election-safety", f"n{nid} and n{other} both lead term {term}")
        elif role == Role.CANDIDATE:
            self.cand_votes[nid] = (term, frozenset(p for p, v in core.votes.items() if v))
        if role != self.role_seen.get(nid):
            self.role_seen[nid] = role
            self.cluster.trace_role(node)
        commit = core.log.committed
        seen = self.commit_seen.get(nid, 0)
        if commit > seen:
            self._check_commit(node, seen, commit, role == Role.LEADER)
        self.commit_seen[nid] = commit

    def _check_invariants(self, nid: int, core: RaftCore) -> None:
        """``core.check_invariants()``, scanning only the entries added since the last call.

        The scanned prefix is trusted while the log keeps the same entry list and
        compaction point and its last scanned entry is still the same object in the same
        place (a truncation below it replaces that object). Full scans re-check all.
        """
        log = core.log
        ents = log.entries
        si = log.snapshot_index
        n = 0
        conf_k, conf = -1, None
        prev = self._scanned.get(nid)
        if prev is not None and prev[0] is ents and prev[1] == si:
            k = prev[2]
            if k <= len(ents) and (k == 0 or ents[k - 1] is prev[3]):
                n = k
                conf_k, conf = prev[4], prev[5]
        prev_term = ents[n - 1].term if n else log.snapshot_term
        for k in range(n, len(ents)):
            e = ents[k]
            if e.index != si + 1 + k:
                self.fail("invariants", f"n{nid}: entry {k} has index {e.index}")
            if e.term < prev_term:
                self.fail("invariants", f"n{nid}: term decreases at index {e.index}")
            prev_term = e.term
            if e.kind == EntryKind.CONF:
                try:
                    conf_k, conf = k, ConfState.decode(e.data)
                except ValueError as err:
                    self.fail("membership", f"n{nid}: bad membership entry {e.index}: {err}")
        self._scanned[nid] = (ents, si, len(ents), ents[-1] if ents else None, conf_k, conf)
        last = si + len(ents)
        if not (si <= log.applied <= log.applying <= log.committed <= last):
            self.fail("invariants", f"n{nid}: index order broken: snap {si} applied "
                                    f"{log.applied} applying {log.applying} commit "
                                    f"{log.committed} last {last}")
        if not si <= log.stable <= last:
            self.fail("invariants", f"n{nid}: stable {log.stable} out of range")
        if log.applied > log.stable:
            # Applied entries were durable when applied; a core that forgets it cannot
            # compact its log up to what it applied.
            self.fail("invariants", f"n{nid}: applied {log.applied} beyond stable {log.stable}")
        if core.role == Role.LEADER and core.leader != core.id:
            self.fail("invariants", f"n{nid}: leader does not name itself")

    def log_conf(self, node: SimNode, core: RaftCore) -> ConfState:
        """The membership ``core``'s log says it is in (see ``membership`` above)."""
        scanned = self._scanned[node.id]
        if scanned[5] is not None:
            return scanned[5]
        si = core.log.snapshot_index
        return node.conf if si == 0 else self.conf_at_committed(si)

    def _check_conf(self, node: SimNode, core: RaftCore) -> None:
        want = self.log_conf(node, core)
        if core.conf != want:
            self.fail("membership", f"n{node.id} uses voters {sorted(core.conf.voters)} "
                                    f"learners {sorted(core.conf.learners)}, but the newest "
                                    f"membership in its log has voters {sorted(want.voters)} "
                                    f"learners {sorted(want.learners)}")

    def _holds(self, nid: int, index: int, term: int, memory: bool) -> bool:
        """Whether node ``nid`` holds ``index@term`` durably (or, with ``memory``, in its
        core's log), or has compacted its log past it."""
        node = self.cluster.nodes.get(nid)
        if node is None:
            return False
        d = node.disk
        if d.term(index) == term or d.log_start[0] > index:
            return True
        core = node.core
        return memory and core is not None and (
            core.log.term(index) == term or core.log.snapshot_index > index)

    def _check_commit_quorum(self, node: SimNode, core: RaftCore, index: int) -> None:
        voters = core.conf.voters
        holders = sorted(p for p in voters if self._holds(p, index, core.term, memory=False))
        if len(holders) < len(voters) // 2 + 1:
            self.fail("quorum", f"leader n{node.id} (term {core.term}) commits {index} over "
                                f"voters {sorted(voters)} but only {holders} hold it durably")

    def _check_election(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        term = core.term
        seen = self.cand_votes.get(node.id)
        granted = set(seen[1]) if seen is not None and seen[0] == term else set()
        granted.add(node.id)
        m = node.stepping
        if m is not None and m.type == MsgType.VOTE_RESP and not m.reject and m.term == term:
            granted.add(m.frm)  # the vote that won it
        voters = core.conf.voters
        quorum = granted & voters
        if len(quorum) < len(voters) // 2 + 1:
            self.fail("quorum", f"n{node.id} leads term {term} with votes of {sorted(quorum)} "
                                f"of voters {sorted(voters)}")
        k = bisect_left(self.commit_term, term)  # entries 1..k were committed below term
        if k == 0:
            return
        e = self.committed[k - 1]
        if not any(self._holds(p, e.index, e.term, memory=True) for p in quorum):
            self.fail("quorum", f"n{node.id} won term {term} with votes of {sorted(quorum)} "
                                f"(voters {sorted(voters)}), none of which holds committed "
                                f"entry {e.index}@t{e.term} (committed in term "
                                f"{self.commit_term[k - 1]}): disjoint majorities")

    def _full_invariants(self, node: SimNode) -> None:
        core = node.core
        if core is not None:
            try:
                core.check_invariants()
            except RaftError as e:
                self.fail("invariants", f"n{node.id}: {e}")

    def entry_at(self, core: RaftCore, index: int) -> Entry | None:
        """The entry ``core`` holds at ``index``: from its log, or from the snapshot that
        covers its compacted prefix; None if it holds none."""
        log = core.log
        off = index - log.snapshot_index - 1
        if off >= 0:
            return log.entries[off] if off < len(log.entries) else None
        snap = core.latest_snapshot
        if index <= 0 or snap is None or index > snap.index:
            return None
        data = self.snapshots.get((snap.index, snap.term))
        return data[index - 1] if data is not None else None

    def term_at(self, core: RaftCore, index: int) -> int | None:
        t = core.log.term(index)
        if t is None and index < core.log.snapshot_index:
            e = self.entry_at(core, index)
            return e.term if e is not None else None
        return t

    def on_restart(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        self.commit_seen[node.id] = core.log.committed
        self.term_seen[node.id] = core.term
        self.role_seen[node.id] = core.role

    def _check_commit(self, node: SimNode, lo: int, hi: int, leader: bool) -> None:
        core = node.core
        assert core is not None
        log = core.log
        nid = node.id
        if leader and log.term(hi) != core.term:
            self.fail("commit-rule", f"leader n{nid} (term {core.term}) advanced its commit "
                                     f"to {hi}, an entry of term {log.term(hi)}")
        if leader:
            self._check_commit_quorum(node, core, hi)
        known = len(self.committed)
        for i in range(lo + 1, min(hi, known) + 1):
            t = self.term_at(core, i)
            if t != self.committed[i - 1].term:
                self.fail("state-machine-safety" if not leader else "leader-completeness",
                          f"n{nid} committed {i}@t{t} but "
                          f"{i}@t{self.committed[i - 1].term} was committed before")
        if hi <= known:
            return
        if not leader:
            self.fail("commit-rule", f"follower n{nid} committed up to {hi}, beyond every "
                                     f"leader's commit index ({known})")
        for i in range(known + 1, hi + 1):
            e = self.entry_at(core, i)
            if e is None:
                self.fail("leader-completeness", f"leader n{nid} commits {i} but holds no "
                                                 f"entry there (compacted to "
                                                 f"{log.snapshot_index})")
                return
            self.committed.append(e)
            self.commit_term.append(core.term)
            if e.kind == EntryKind.CONF:
                conf = ConfState.decode(e.data)
                self.confs.append((e.index, conf))
                self.cluster.trace(f"membership committed at {e.index}: voters "
                                   f"{sorted(conf.voters)} learners {sorted(conf.learners)}")
        first = known == 0 or self.commit_term[known - 1] != core.term
        self.cluster.trace(f"n{nid} commits {known + 1}..{hi} (term {core.term})"
                           + (" - its first commit as leader" if first else ""),
                           level=1 if first else 2)
        # Leaders of a later term that exist already must hold the new entries too.
        for t, lead in self.leaders.items():
            if t > core.term:
                other = self.cluster.nodes[lead].core
                if other is not None and other.term == t and other.role == Role.LEADER:
                    self._check_new_leader(self.cluster.nodes[lead], known)

    def _check_new_leader(self, node: SimNode, start: int = 0) -> None:
        core = node.core
        assert core is not None
        for k in range(start, len(self.committed)):
            if self.commit_term[k] >= core.term:
                break
            e = self.committed[k]
            if e.index > core.log.snapshot_index:
                have = core.log.term(e.index)
                ok = have == e.term
            else:  # compacted: the snapshot covering it must hold it
                got = self.entry_at(core, e.index)
                have = got.term if got is not None else None
                ok = got == e or (e.index == core.log.snapshot_index
                                  and core.log.snapshot_term == e.term and got is None)
            if not ok:
                self.fail("leader-completeness",
                          f"n{node.id} leads term {core.term} but lacks committed entry "
                          f"{e.index}@t{e.term} (committed in term {self.commit_term[k]}; "
                          f"it has t{have})")

    # --- Ready processing -------------------------------------------------------------

    def after_ready(self, node: SimNode, rd: Ready) -> None:
        self.after_op(node)
        core = node.core
        assert core is not None
        if rd.entries:
            prev = core.log.term(rd.entries[0].index - 1)
            if prev is None:
                self.fail("invariants", f"n{node.id}: Ready entries start at "
                                        f"{rd.entries[0].index}, after a missing entry")
            self._record(node, rd.entries, prev or 0)

    def _record(self, node: SimNode, entries: list[Entry], prev_term: int) -> None:
        seen = self.seen
        for e in entries:
            key = (e.index, e.term)
            val = (e.data, e.kind, prev_term)
            old = seen.setdefault(key, val)
            if old != val:
                self.fail("log-matching",
                          f"n{node.id} holds {e.index}@t{e.term} = {val[0]!r} after an entry of "
                          f"t{prev_term}; another log holds {old[0]!r} after t{old[2]}")
            prev_term = e.term

    def full_scan(self) -> None:
        """Check every in-memory and durable log against everything seen so far, and
        every core's invariants over its whole log."""
        for node in self.cluster.nodes.values():
            d = node.disk
            self._record(node, d.entries, d.log_start[1])
            core = node.core
            if core is not None:
                self._full_invariants(node)
                log = core.log
                self._record(node, log.entries, log.snapshot_term)

    # --- snapshots --------------------------------------------------------------------

    def _check_snapshot(self, node: SimNode, meta: SnapshotMeta, data: SnapData,
                        what: str) -> None:
        key = (meta.index, meta.term)
        known = self.snapshots.get(key)
        if known is not None:
            if known != data:
                self.fail("state-machine-safety",
                          f"n{node.id} {what} snapshot {meta.index}@t{meta.term} whose content "
                          f"differs from another snapshot with that index and term")
            return
        n = meta.index
        if len(data) != n or (n and data[-1].term != meta.term):
            self.fail("state-machine-safety",
                      f"n{node.id} {what} snapshot {meta.index}@t{meta.term} holding "
                      f"{len(data)} entries ending at "
                      f"t{data[-1].term if data else 0}")
        if n > len(self.committed) or tuple(self.committed[:n]) != data:
            bad = next((i + 1 for i in range(min(n, len(self.committed)))
                        if data[i] != self.committed[i]), min(n, len(self.committed)) + 1)
            self.fail("state-machine-safety",
                      f"n{node.id} {what} snapshot {meta.index}@t{meta.term} that is not the "
                      f"committed prefix (first difference at {bad})")
        want = self.conf_at_committed(n)
        if meta.conf != want:
            self.fail("membership", f"n{node.id} {what} snapshot {meta.index}@t{meta.term} "
                                    f"with voters {sorted(meta.conf.voters)} learners "
                                    f"{sorted(meta.conf.learners)}, but the committed log "
                                    f"has voters {sorted(want.voters)} learners "
                                    f"{sorted(want.learners)} there")
        self.snapshots[key] = data

    def on_snapshot_taken(self, node: SimNode, meta: SnapshotMeta, data: SnapData) -> None:
        self._check_snapshot(node, meta, data, "takes")

    def on_install(self, node: SimNode, meta: SnapshotMeta, data: SnapData) -> None:
        """A state machine is about to be replaced by a snapshot received from a leader."""
        self._check_snapshot(node, meta, data, "installs")
        core = node.core
        assert core is not None
        if core.log.snapshot_index < meta.index:
            self.fail("persistence", f"n{node.id} installs snapshot {meta.index} but its core's "
                                     f"log starts at {core.log.snapshot_index}")

    def before_write(self, node: SimNode, rd: Ready) -> None:
        d = node.disk
        hs = rd.hard_state
        if hs is not None:
            old = d.hard_state
            if hs.term < old.term:
                self.fail("persistence", f"n{node.id} persists term {hs.term} over {old.term}")
            if hs.term == old.term and old.vote not in (NONE, hs.vote):
                self.fail("persistence", f"n{node.id} changes its vote in term {hs.term} "
                                         f"from {old.vote} to {hs.vote}")
        if rd.entries:
            first = rd.entries[0].index
            if first <= d.log_start[0]:
                self.fail("persistence", f"n{node.id} writes entries from {first}, at or below "
                                         f"its durable compaction point {d.log_start[0]}")
            if first > d.last_index() + 1:
                self.fail("persistence", f"n{node.id} writes entries from {first} but its "
                                         f"durable log ends at {d.last_index()}")
            if first <= d.applied:
                self.fail("persistence", f"n{node.id} overwrites entry {first}, already "
                                         f"applied (durably up to {d.applied})")

    def after_write(self, node: SimNode, expect: tuple[int, int, HardState]) -> None:
        last, last_term, hs = expect
        d = node.disk
        dl = d.last_index()
        dterm = d.last_term()
        if (dl, dterm) != (last, last_term):
            self.fail("persistence", f"n{node.id}: after its Ready is written the durable log "
                                     f"ends at {dl}@t{dterm}, but the core's log ended at "
                                     f"{last}@t{last_term} when the Ready was taken")
        if dterm > d.hard_state.term:
            self.fail("persistence", f"n{node.id}: durable log holds an entry of term {dterm} "
                                     f"but the durable term is {d.hard_state.term}")
        if d.hard_state != hs:
            self.fail("persistence", f"n{node.id}: durable hard state {tuple(d.hard_state)} "
                                     f"!= {tuple(hs)} when the Ready was taken")

    def on_apply(self, node: SimNode, e: Entry) -> None:
        nid = node.id
        if e.index != node.applied + 1:
            self.fail("state-machine-safety", f"n{nid} applies {e.index} after {node.applied}")
        if node.disk.entry(e.index) != e:
            self.fail("persistence", f"n{nid} applies {e.index}@t{e.term} which is not in its "
                                     f"durable log")
        first = self.applied_at.setdefault(e.index, e)
        if first != e:
            self.fail("state-machine-safety",
                      f"n{nid} applies {e.index}@t{e.term}={e.data!r}, another replica applied "
                      f"{first.index}@t{first.term}={first.data!r}")
        if e.index > len(self.committed) or self.committed[e.index - 1] != e:
            self.fail("state-machine-safety", f"n{nid} applies {e.index}@t{e.term} which no "
                                              f"leader committed")
        if is_command(e) and e.data in node.sm_payloads:
            self.fail("state-machine-safety", f"n{nid} applies payload {e.data!r} twice (at "
                                              f"{node.sm_payloads[e.data]} and {e.index})")
