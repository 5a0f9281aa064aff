"""Drive a :class:`~kvraft.raft.RaftCore` by hand in unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from kvraft.raft import Message, MsgType, RaftCore, Role


def win_election(core: RaftCore, voters: Iterable[int]) -> None:
    """Tick ``core`` until it campaigns and grant it the pre-vote and the vote of each
    of ``voters`` (enough for a quorum); it then leads, and its first entry is written
    (``advance``) but not committed."""
    peers = list(voters)
    for _ in range(3 * core.cfg.election_ticks):
        if core.role != Role.FOLLOWER:
            break
        core.tick()
    for peer in peers:
        for m in [m for m in core.msgs if m.to == peer and m.type == MsgType.PRE_VOTE]:
            core.step(Message(MsgType.PRE_VOTE_RESP, to=core.id, frm=peer, term=m.term))
    core.msgs.clear()
    for peer in peers:
        core.step(Message(MsgType.VOTE_RESP, to=core.id, frm=peer, term=core.term))
    assert core.role == Role.LEADER, core.role
    core.advance(core.ready())


def commit_through(core: RaftCore, peer: int) -> None:
    """``peer`` acknowledges the leader's whole log, which commits it (3 voters)."""
    last = core.log.last_index()
    core.step(Message(MsgType.APP_RESP, to=core.id, frm=peer, term=core.term, index=last))
    assert core.log.committed == last and core.log.term(last) == core.term
