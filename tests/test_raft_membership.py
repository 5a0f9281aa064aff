"""Membership changes in the Raft core: learners, single-server changes, removal.

The scenarios run on the golden interpreter's cluster (``tests/golden/interpreter.py``):
the same network, storage and Ready handling as the golden files, driven from Python
so each test can assert on the cores directly. Every test also fails on a safety
violation or a core error printed by the interpreter.
"""

from __future__ import annotations

import random

import pytest
from golden.interpreter import Env

from kvraft.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Role,
    SnapshotMeta,
)


def conf(voters: set[int] | frozenset[int], learners: set[int] | frozenset[int] = frozenset()
         ) -> ConfState:
    return ConfState(frozenset(voters), frozenset(learners))


class Cluster:
    """An interpreter environment plus the transcript of everything run in it."""

    def __init__(self, n: int = 3, **opts: str) -> None:
        self.env = Env()
        self.log: list[str] = []
        args = " ".join(f"{k}={v}" for k, v in opts.items())
        self.run(f"add-nodes {n} {args}")

    def run(self, line: str) -> str:
        out = self.env.run(line)
        self.log.append(f"{line}\n{out}")
        bad = [ln for ln in out.split("\n") if "SAFETY VIOLATION" in ln
               or ln.strip().startswith("error:")]
        assert not bad, f"{line}: {bad}"
        return out

    def try_run(self, line: str) -> str:
        """Run a command whose ``error:`` output is expected (returned, not raised)."""
        out = self.env.run(line)
        assert "SAFETY VIOLATION" not in out, out
        return out

    def core(self, i: int) -> RaftCore:
        return self.env.nodes[i].up()

    def stabilize(self) -> None:
        self.run("stabilize quiet=true")

    def elect(self, i: int) -> None:
        self.run(f"campaign {i} quiet=true")
        self.stabilize()
        assert self.core(i).role == Role.LEADER

    def leaders(self) -> list[int]:
        return [i for i, n in self.env.nodes.items()
                if n.core is not None and n.core.role == Role.LEADER]

    def applied(self, i: int) -> list[Entry]:
        return [e for e in self.core(i).log.entries if e.index <= self.core(i).log.applied]


def started(n: int = 3, **opts: str) -> Cluster:
    c = Cluster(n, **opts)
    c.elect(1)
    c.run("propose 1 a quiet=true")
    c.stabilize()
    return c


# --- learners ----------------------------------------------------------------------


def test_learner_receives_the_log_but_does_not_count_in_the_quorum() -> None:
    c = started(3)
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    l4 = c.core(4)
    assert l4.conf == conf({1, 2, 3}, {4})
    assert l4.log.last_index() == c.core(1).log.last_index()
    assert l4.log.committed == c.core(1).log.committed, "the learner learns the commit index"
    # With voters 2 and 3 cut off, the leader and the learner are no quorum.
    c.run("partition 1 4 | 2 | 3")
    commit = c.core(1).log.committed
    c.run("propose 1 b quiet=true")
    c.stabilize()
    assert c.core(4).log.last_index() == commit + 1, "the learner got the new entry"
    assert c.core(1).log.committed == commit, "a learner's copy must not count"
    c.run("heal")
    c.run("tick-heartbeat 1")
    c.stabilize()
    assert c.core(1).log.committed == commit + 1


def test_learner_never_campaigns_and_gets_no_votes() -> None:
    c = started(3, checkquorum="false")  # no lease: a vote request is considered
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    c.run("crash 1")
    l4 = c.core(4)
    for _ in range(10 * l4.cfg.election_ticks):
        c.run("tick 4")
        assert l4.role == Role.FOLLOWER
    assert not c.core(4).msgs and c.env.network == []


def test_a_voter_that_does_not_know_it_is_one_still_votes() -> None:
    """Regression: votes used to be refused to candidates that are not voters in the
    voter's own membership. Voters {1, 6, 7}: 7 was added and promoted while far behind
    (its log holds neither change, its membership is still empty), then leader 1
    removed itself ({6, 7}, uncommitted) and stepped down. 6 can only win with 7's vote,
    and 7 refused it: the group could never elect a leader again (found by the
    simulator, seed 45 with membership changes)."""
    joiner = RaftCore(Config(id=7, check_quorum=False), random.Random(0),
                      InitialState(conf=conf(set())))
    joiner.step(Message(MsgType.APP, to=7, frm=1, term=10, index=0, log_term=0, commit=1,
                        entries=[Entry(1, 10)]))
    joiner.msgs.clear()
    for t in (MsgType.PRE_VOTE, MsgType.VOTE):
        joiner.step(Message(t, to=7, frm=6, term=11, index=5, log_term=10))
        (resp,) = joiner.msgs
        joiner.msgs.clear()
        assert not resp.reject, f"{t.name} refused"
    # The same in a whole group: 6 wins with 7's vote.
    c = started(3)
    c.run("add-node 4")
    c.run("partition 1 2 3")  # 4 is cut off: it learns nothing
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    c.run("promote 1 4 quiet=true")
    c.run("stabilize 1 2 3 quiet=true")
    c.run("remove 1 3 quiet=true")  # voters {1, 2, 4}
    c.run("stabilize 1 2 quiet=true")
    c.run("crash 3")
    c.run("remove 1 1 quiet=true")  # voters {2, 4}: needs 4, which knows nothing
    c.run("stabilize 1 2 quiet=true")
    assert c.core(4).conf == conf(set()) and c.core(2).conf == conf({2, 4})
    c.run("heal")
    for _ in range(10):
        if c.leaders() and c.core(c.leaders()[0]).id in (2, 4):
            break
        c.run("tick-election 1 2 4 quiet=true")
        c.stabilize()
    assert c.leaders() == [2] or c.leaders() == [4]
    lead = c.leaders()[0]
    c.run(f"propose {lead} x quiet=true")
    c.stabilize()
    assert c.core(4).conf == conf({2, 4})
    assert c.core(4).log.committed == c.core(2).log.committed == c.core(2).log.last_index()


def test_add_learner_then_promote() -> None:
    c = started(3)
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    assert c.core(1).conf == conf({1, 2, 3}, {4})
    c.run("promote 1 4 quiet=true")
    c.stabilize()
    for i in (1, 2, 3, 4):
        assert c.core(i).conf == conf({1, 2, 3, 4}), i
        assert c.core(i).status().voters == (1, 2, 3, 4)
    # Four voters: a quorum is three. Leader 1 and voter 4 alone cannot commit.
    c.run("partition 1 4 | 2 3")
    commit = c.core(1).log.committed
    c.run("propose 1 x quiet=true")
    c.stabilize()
    assert c.core(1).log.committed == commit
    c.run("heal")
    c.run("partition 1 4 2 | 3")
    c.run("tick-heartbeat 1")
    c.stabilize()
    assert c.core(1).log.committed == commit + 1
    # The promoted node can now lead.
    c.run("heal")
    c.run("transfer-leadership from=1 to=4 quiet=true")
    c.stabilize()
    assert c.leaders() == [4]


# --- propose_conf refusals ---------------------------------------------------------


def test_two_voters_at_once_are_refused() -> None:
    c = started(3)
    with pytest.raises(ValueError, match="one voter at a time"):
        c.core(1).propose_conf(conf({1, 2, 3, 4, 5}))
    with pytest.raises(ValueError, match="one voter at a time"):
        c.core(1).propose_conf(conf({1}))
    with pytest.raises(ValueError, match="one voter at a time"):
        c.core(1).propose_conf(conf({1, 2, 4}))  # swap: one out, one in
    # Learners change freely with one voter change.
    c.core(1).propose_conf(conf({1, 2, 3, 4}, {5, 6}))


def test_empty_voters_and_overlap_are_refused() -> None:
    c = started(1)
    with pytest.raises(ValueError, match="at least one voter"):
        c.core(1).propose_conf(conf(set(), {2}))
    with pytest.raises(ValueError, match="both voters and learners"):
        c.core(1).propose_conf(conf({1}, {1}))
    with pytest.raises(ValueError, match="both voters and learners"):
        c.core(1).propose_conf(conf({1, 2}, {2}))


def test_change_while_another_is_pending_is_refused() -> None:
    c = started(3)
    index, _ = c.core(1).propose_conf(conf({1, 2, 3}, {4}))
    assert c.core(1).pending_conf_index() == index
    with pytest.raises(ProposalDropped, match="not committed yet"):
        c.core(1).propose_conf(conf({1, 2, 3}, {4, 5}))
    c.stabilize()
    assert c.core(1).log.committed >= index
    c.core(1).propose_conf(conf({1, 2, 3}, {4, 5}))


def test_new_leader_must_commit_an_entry_of_its_term_first() -> None:
    c = started(3, checkquorum="false")
    c.run("crash 1")
    c.run("campaign 2 quiet=true")
    for _ in range(2):  # pre-vote round, vote round
        c.run("process-ready 2 quiet=true")
        c.run("deliver-msgs 3 quiet=true")
        c.run("process-ready 3 quiet=true")
        c.run("deliver-msgs 2 quiet=true")
    core = c.core(2)
    assert core.role == Role.LEADER
    assert core.log.term(core.log.committed) != core.term, "its no-op is not committed"
    with pytest.raises(ProposalDropped, match="of its term"):
        core.propose_conf(conf({1, 2, 3}, {4}))
    c.run("stabilize 2 3 quiet=true")
    assert core.log.term(core.log.committed) == core.term
    core.propose_conf(conf({1, 2, 3}, {4}))


def test_non_leader_and_transfer_refuse() -> None:
    c = started(3)
    with pytest.raises(NotLeader):
        c.core(2).propose_conf(conf({1, 2, 3}, {4}))
    c.run("partition 1 | 2 3")
    c.run("transfer-leadership from=1 to=2")
    with pytest.raises(ProposalDropped, match="transfer"):
        c.core(1).propose_conf(conf({1, 2, 3}, {4}))


# --- removing the leader -------------------------------------------------------------


def test_removed_leader_steps_down_and_never_campaigns_again() -> None:
    c = started(3)
    term0 = c.core(1).term
    c.run("remove 1 1 quiet=true")
    # Before the change commits the old leader still leads (it replicates the change).
    assert c.core(1).role == Role.LEADER and c.core(1).conf == conf({2, 3})
    c.stabilize()
    # It committed its removal, handed over with MsgTimeoutNow and stepped down.
    assert c.core(1).role == Role.FOLLOWER
    (lead,) = c.leaders()
    assert lead in (2, 3)
    assert c.core(lead).term == term0 + 1, "the caught-up voter campaigned on MsgTimeoutNow"
    for i in (2, 3):
        assert c.core(i).conf == conf({2, 3})
    c.run(f"propose {lead} after quiet=true")
    c.stabilize()
    assert c.core(lead).log.committed == c.core(lead).log.last_index()
    # The old leader is out: it never campaigns, whatever happens.
    term = c.core(1).term
    c.run(f"crash {lead}")
    for _ in range(5 * c.core(1).cfg.election_ticks):
        c.run("tick 1")
        assert c.core(1).role == Role.FOLLOWER and c.core(1).term == term
        assert not c.core(1).msgs


def test_removed_leader_not_caught_up_leaves_the_election_to_timeouts() -> None:
    """Its removal commits while an entry after it is not on any voter yet: no voter is
    fully caught up, so no MsgTimeoutNow; the remaining voters elect on timeout."""
    c = started(3)
    old = c.core(1)
    i, _ = old.propose_conf(conf({2, 3}))
    c.run("process-ready 1 quiet=true")  # MsgApp with the change to 2 and 3
    c.run("deliver-msgs 2 3 quiet=true")
    c.run("propose 1 b quiet=true")
    c.run("process-ready 1 2 3 quiet=true")  # 1 sends b; 2 and 3 ack the change
    c.run("drop-msgs from=1 quiet=true")  # b is lost
    c.run("deliver-msgs 1 quiet=true")
    assert old.log.committed == i and old.role == Role.LEADER
    rd = old.ready()
    assert old.role == Role.FOLLOWER, "its removal is committed: it steps down"
    assert all(m.type != MsgType.TIMEOUT_NOW for m in rd.messages)
    old.advance(rd)
    c.env.network.extend(rd.messages)
    c.stabilize()
    for _ in range(4):
        if c.leaders():
            break
        c.run("tick-election 2 3 quiet=true")
        c.stabilize()
    (lead,) = c.leaders()
    assert lead in (2, 3) and old.role == Role.FOLLOWER
    assert c.core(lead).log.committed > i and c.core(lead).conf == conf({2, 3})


@pytest.mark.parametrize("checkquorum", ["true", "false"])
def test_removed_node_that_missed_its_removal_does_not_raise_the_term(checkquorum: str) -> None:
    c = started(3, checkquorum=checkquorum)
    c.run("partition 1 2 | 3")
    c.run("remove 1 3 quiet=true")
    c.stabilize()
    assert c.core(1).log.committed == c.core(1).log.last_index()
    assert c.core(3).conf == conf({1, 2, 3}), "3 never heard of its removal"
    c.run("heal")
    term = c.core(1).term
    sent = ""
    for _ in range(6):
        c.run("tick-election 3 quiet=true")
        sent += c.run("stabilize")
    assert "3->1 MsgPreVote" in sent and "3->2 MsgPreVote" in sent, "3 kept campaigning"
    if checkquorum == "false":  # no lease: they answer, and refuse a non-voter
        assert "1->3 MsgPreVoteResp Term:1 Rejected" in sent
    assert c.core(1).role == Role.LEADER and c.core(1).term == term
    assert c.core(2).term == term
    assert c.core(3).role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    assert c.core(3).term == term, "pre-votes never raise a term"


# --- the membership in force ---------------------------------------------------------


def test_conf_reverts_when_its_entry_is_truncated() -> None:
    c = started(3, checkquorum="false")
    c.run("partition 1 | 2 3")
    c.run("add-learner 1 4 quiet=true")
    c.run("stabilize 1 quiet=true")
    assert c.core(1).conf == conf({1, 2, 3}, {4})
    c.run("campaign 2 quiet=true")
    c.run("stabilize 2 3 quiet=true")
    assert c.core(2).role == Role.LEADER
    c.run("propose 2 b quiet=true")
    c.stabilize()
    c.run("heal")
    c.run("tick-heartbeat 2")
    c.stabilize()
    # 1's uncommitted change was overwritten by 2's log: its membership went with it.
    assert c.core(1).role == Role.FOLLOWER
    assert all(e.kind != EntryKind.CONF for e in c.core(1).log.entries)
    assert c.core(1).conf == conf({1, 2, 3})
    assert c.core(1).pending_conf_index() == 0


def test_conf_reverts_on_a_follower() -> None:
    """A follower uses a change from the moment it appends it, and drops it with the
    entry when a new leader overwrites it."""
    c3 = conf({1, 2, 3})
    f = RaftCore(Config(id=2), random.Random(0), InitialState(conf=c3))
    f.step(Message(MsgType.APP, to=2, frm=1, term=1, index=0, log_term=0, commit=1,
                   entries=[Entry(1, 1), Entry(2, 1, conf({1, 2}).encode(), EntryKind.CONF),
                            Entry(3, 1, conf({1, 2}, {4}).encode(), EntryKind.CONF)]))
    assert f.conf == conf({1, 2}, {4}) and f.pending_conf_index() == 3
    # A leader of term 2 whose log holds only entry 1 overwrites 2 and 3.
    f.step(Message(MsgType.APP, to=2, frm=3, term=2, index=1, log_term=1, commit=1,
                   entries=[Entry(2, 2)]))
    assert f.log.last_index() == 2 and f.log.term(2) == 2
    assert f.conf == c3 and f.pending_conf_index() == 0
    assert f.promotable()
    # Overwriting only the newest change keeps the one before it.
    f = RaftCore(Config(id=2), random.Random(0), InitialState(conf=c3))
    f.step(Message(MsgType.APP, to=2, frm=1, term=1, index=0, log_term=0, commit=0,
                   entries=[Entry(1, 1, conf({1, 2, 3}, {4}).encode(), EntryKind.CONF),
                            Entry(2, 1, conf({1, 3}, {4}).encode(), EntryKind.CONF)]))
    # Its removal is in its log but not committed: it may still campaign (the voters
    # left may need it to commit the removal), counting votes over {1, 3}.
    assert f.conf == conf({1, 3}, {4}) and f.promotable()
    f.step(Message(MsgType.APP, to=2, frm=3, term=2, index=1, log_term=1, commit=1,
                   entries=[Entry(2, 2), Entry(3, 2)]))
    assert f.conf == conf({1, 2, 3}, {4}) and f.pending_conf_index() == 1 and f.promotable()


def test_conf_at_gives_the_membership_in_force_at_an_index() -> None:
    c = started(3)
    base = c.core(1).log.last_index()
    i1, _ = c.core(1).propose_conf(conf({1, 2, 3}, {4}))
    c.stabilize()
    i2, _ = c.core(1).propose_conf(conf({1, 2, 3, 4}))
    c.stabilize()
    core = c.core(1)
    assert core.conf_at(base) == conf({1, 2, 3})
    assert core.conf_at(i1 - 1) == conf({1, 2, 3})
    assert core.conf_at(i1) == conf({1, 2, 3}, {4})
    assert core.conf_at(i2 - 1) == conf({1, 2, 3}, {4})
    assert core.conf_at(i2) == core.conf == conf({1, 2, 3, 4})
    # Compaction keeps the answer for indexes at or above the compaction point.
    c.run(f"compact 1 {i1}")
    assert c.env.nodes[1].storage.snapshot.conf == conf({1, 2, 3}, {4})
    assert core.conf_at(i1) == conf({1, 2, 3}, {4})
    assert core.conf_at(i2) == conf({1, 2, 3, 4})


def _restart_from(entries: list[Entry], base: ConfState, snap: SnapshotMeta | None = None,
                  log_start: tuple[int, int] | None = None) -> RaftCore:
    st = InitialState(conf=base, hard_state=HardState(entries[-1].term if entries else 1, 0),
                      snapshot=snap, entries=entries, log_start=log_start)
    return RaftCore(Config(id=2), random.Random(0), st)


def test_restart_reads_the_membership_from_its_log() -> None:
    c3, c4, c2 = conf({1, 2, 3}), conf({1, 2, 3}, {4}), conf({1, 3})
    entries = [Entry(1, 1), Entry(2, 1, c4.encode(), EntryKind.CONF), Entry(3, 1),
               Entry(4, 2, c2.encode(), EntryKind.CONF), Entry(5, 2)]
    core = _restart_from(entries, c3)
    assert core.conf == c2 and core.pending_conf_index() == 4
    assert [core.conf_at(i) for i in range(6)] == [c3, c3, c4, c4, c2, c2]
    # Its removal is not known to be committed: it may still have to lead to commit it.
    assert core.promotable()
    st = InitialState(conf=c3, hard_state=HardState(2, 0), entries=entries, applied=5)
    core = RaftCore(Config(id=2), random.Random(0), st)
    assert not core.promotable(), "2's removal is committed: it must not campaign"
    # With a snapshot at 3 (whose membership is c4), only entries after it count.
    snap = SnapshotMeta(3, 1, c4)
    core = _restart_from(entries[3:], c4, snap)
    assert core.conf == c2 and core.conf_at(3) == c4
    # A log kept below the snapshot (compacted to 1, snapshot at 3): the CONF entry at 2
    # is covered by the snapshot's membership and must not be read twice.
    core = _restart_from(entries[1:], c4, snap, log_start=(1, 1))
    assert core.conf == c2 and core.conf_at(3) == c4 and core.pending_conf_index() == 4
    core = _restart_from(entries[1:3], c4, snap, log_start=(1, 1))
    assert core.conf == c4 and core.pending_conf_index() == 0


def test_restarted_node_has_the_membership_of_its_log() -> None:
    c = started(3)
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    c.run("promote 1 4 quiet=true")
    c.stabilize()
    for i in (2, 4):
        c.run(f"crash {i}")
        c.run(f"restart {i}")
        assert c.core(i).conf == conf({1, 2, 3, 4}), i
    # Restarted from a snapshot taken after the changes, too.
    c.run(f"compact 2 {c.core(2).log.committed}")
    c.run("crash 2")
    c.run("restart 2")
    assert c.core(2).conf == conf({1, 2, 3, 4})
    assert c.core(2).log.snapshot_index == c.core(1).log.committed


def test_snapshot_install_carries_the_membership() -> None:
    c = started(3)
    c.run("add-node 4")
    c.run("partition 1 2 4 | 3")
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    c.run("promote 1 4 quiet=true")
    c.stabilize()
    c.run("propose 1 b quiet=true")
    c.stabilize()
    last = c.core(1).log.committed
    c.run(f"compact 1 {last}")
    snap = c.env.nodes[1].storage.snapshot
    assert snap is not None and snap.conf == conf({1, 2, 3, 4})
    c.run("heal")
    c.run("tick-heartbeat 1")
    c.stabilize()
    for i in (3, 4):
        core = c.core(i)
        assert core.log.committed == last, i
        assert core.conf == conf({1, 2, 3, 4}), i
    assert c.core(3).log.snapshot_index == last, "3 caught up by snapshot"
    # A snapshot taken with an older membership and a newer one in the log above it.
    c.run("remove 1 4 quiet=true")
    c.run("process-ready 1 quiet=true")
    c.run("drop-msgs quiet=true")
    assert c.core(1).conf == conf({1, 2, 3})
    assert c.core(1).conf_at(last) == conf({1, 2, 3, 4})


def test_restore_conf_replaces_the_log_membership() -> None:
    core = RaftCore(Config(id=5), random.Random(1), InitialState(conf=conf(set())))
    assert core.conf == conf(set()) and not core.promotable()
    snap = SnapshotMeta(10, 3, conf({1, 2}, {5}))
    core.step(Message(MsgType.SNAP, to=5, frm=1, term=3, snapshot=snap))
    assert core.conf == conf({1, 2}, {5}) and core.conf_at(10) == snap.conf
    assert core.pending_conf_index() == 0
    rd = core.ready()
    assert rd.snapshot == snap


def test_joining_node_waits_to_be_added() -> None:
    c = started(3)
    c.run("add-node 4")
    for _ in range(5 * c.core(4).cfg.election_ticks):
        c.run("tick 4")
    assert c.core(4).role == Role.FOLLOWER and c.core(4).term == 0
    assert c.env.network == []
    c.run("add-learner 1 4 quiet=true")
    c.stabilize()
    assert c.core(4).log.committed == c.core(1).log.committed
    assert c.core(4).term == c.core(1).term and c.core(4).leader == 1


def test_a_node_whose_removal_is_committed_never_campaigns() -> None:
    c3 = conf({1, 2, 3})
    f = RaftCore(Config(id=2), random.Random(0), InitialState(conf=c3))
    f.step(Message(MsgType.APP, to=2, frm=1, term=1, index=0, log_term=0, commit=0,
                   entries=[Entry(1, 1), Entry(2, 1, conf({1, 3}).encode(), EntryKind.CONF)]))
    assert f.promotable()  # uncommitted removal
    f.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1, commit=2))
    assert f.log.committed == 2 and not f.promotable()
    for _ in range(100):
        f.tick()
    assert f.role == Role.FOLLOWER and f.term == 1 and f.campaigns == 0


def test_a_removed_follower_hears_that_its_removal_is_committed() -> None:
    """The leader keeps replicating to a removed node until a heartbeat has told it the
    removal is committed: it then never campaigns (it knows it is out)."""
    c = started(3)
    c.run("remove 1 3 quiet=true")
    c.stabilize()
    removal = c.core(1).pending_conf_index()
    assert c.core(1).log.committed >= removal
    c.run("tick-heartbeat 1")
    c.stabilize()
    f = c.core(3)
    assert f.log.committed >= removal and not f.promotable()
    assert 3 not in c.core(1).prs, "dropped once it was told"


def test_a_change_without_a_live_majority_of_the_new_voters_is_refused() -> None:
    """With 3 down, removing 2 from {1, 2, 3} would leave {1, 3}: no live majority, and
    (changes take effect on append) no way to commit that or any later change."""
    c = started(3)
    c.run("partition 1 2 | 3")
    for _ in range(3):
        c.run("tick-election 1")
        c.stabilize()
    lead = c.core(1)
    with pytest.raises(ProposalDropped, match="no live majority"):
        lead.propose_conf(conf({1, 3}))
    lead.propose_conf(conf({1, 2}))  # removing the dead one is fine


def test_a_forged_append_answer_beyond_the_log_moves_nothing() -> None:
    """An APP_RESP for an index the leader never had (or one "from" the leader itself)
    neither raises a follower's match past the log nor commits anything."""
    c = started(3)
    lead = c.core(1)
    last, committed = lead.log.last_index(), lead.log.committed
    match = {p: pr.match for p, pr in lead.prs.items()}
    lead.step(Message(MsgType.APP_RESP, to=1, frm=2, term=lead.term, index=last + 10**6))
    lead.step(Message(MsgType.APP_RESP, to=1, frm=1, term=lead.term, index=last + 10**6))
    assert {p: pr.match for p, pr in lead.prs.items()} == match
    assert lead.log.committed == committed
    c.run("propose 1 b quiet=true")
    c.stabilize()
    assert lead.log.committed == last + 1  # the group still commits
