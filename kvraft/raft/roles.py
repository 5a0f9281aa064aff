"""Role transitions and message handlers of the Raft core.

``step`` applies the rules every role shares (term comparison, leases, votes),
then dispatches through ``_ROLE_STEP`` to the handlers of the replica's role.
All functions take the ``RaftCore`` they act on as their first argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvraft.raft.errors import NotLeader
from kvraft.raft.progress import ProgressState
from kvraft.raft.quorum import VoteResult, committed_index
from kvraft.raft.types import APP_QUIET, NONE, Entry, Message, MsgType, Role

if TYPE_CHECKING:
    from kvraft.raft.core import RaftCore

CAMPAIGN_TRANSFER = 1
"""``ctx`` of a VOTE sent because of a leadership transfer: it overrides leases."""

_FROM_LEADER = (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP)


# --- common rules ------------------------------------------------------------------


def step(r: RaftCore, m: Message) -> None:
    if m.term > r.term:
        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            forced = m.type == MsgType.VOTE and m.ctx == CAMPAIGN_TRANSFER
            in_lease = r.cfg.check_quorum and (
                (r.leader != NONE and r.election_elapsed < r.cfg.election_ticks)
                # A leader may count this replica into its lease from its last contact
                # (or from before a restart): it waits out an election timeout from
                # then, even if a higher-term answer has cleared ``leader`` since.
                or (r.cfg.vote_lease
                    and r.ticks - r.leader_contact < r.cfg.election_ticks))
            if in_lease and not forced:
                return  # a live leader exists: do not let this node disrupt it
        if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
            pass  # pre-votes never change terms
        else:
            become_follower(r, m.term, m.frm if m.type in _FROM_LEADER else NONE)
    elif m.term < r.term:
        if (r.cfg.check_quorum or r.cfg.pre_vote) and m.type in (MsgType.APP, MsgType.HEARTBEAT):
            # A stale leader: tell it our term so it steps down.
            r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term))
        elif m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
            # Tell a stale candidate our term (Raft: reply false with currentTerm), so it
            # catches up: a voter it cannot otherwise hear from (one whose membership
            # does not list it, such as a node that joined later) may need its vote.
            resp = MsgType.PRE_VOTE_RESP if m.type == MsgType.PRE_VOTE else MsgType.VOTE_RESP
            r.send(Message(resp, to=m.frm, frm=r.id, term=r.term, reject=True))
        return
    if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
        _handle_vote_request(r, m)
        return
    _ROLE_STEP[r.role](r, m)


def _handle_vote_request(r: RaftCore, m: Message) -> None:
    resp = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
    # Votes do not consult the membership (Raft thesis 4.1): a lagging voter may not
    # yet hold the entry that made the candidate a voter (or even the one that added
    # this node, whose membership is then still empty), and refusing would leave a
    # group whose live majority cannot elect anyone. A removed node that missed its
    # removal gets no majority anyway: a majority of its old membership holds the
    # removal entry, so its log is behind theirs.
    can_vote = (
        r.vote == m.frm
        or (r.vote == NONE and r.leader == NONE)
        or (m.type == MsgType.PRE_VOTE and m.term > r.term)
    )
    if can_vote and r.log.is_up_to_date(m.index, m.log_term):
        r.send(Message(resp, to=m.frm, frm=r.id, term=m.term))
        if m.type == MsgType.VOTE:
            r.election_elapsed = 0
            r.vote = m.frm
    else:
        r.send(Message(resp, to=m.frm, frm=r.id, term=r.term, reject=True))


# --- transitions -----------------------------------------------------------------


def become_follower(r: RaftCore, term: int, leader: int) -> None:
    r.reset(term)
    r.role = Role.FOLLOWER
    r.leader = leader
    if leader != NONE:
        r.leader_contact = r.ticks


def become_pre_candidate(r: RaftCore) -> None:
    r.reset(r.term)  # same term, vote kept
    r.role = Role.PRE_CANDIDATE


def become_candidate(r: RaftCore) -> None:
    r.reset(r.term + 1)
    r.vote = r.id
    r.role = Role.CANDIDATE


def become_leader(r: RaftCore) -> None:
    r.reset(r.term)
    r.role = Role.LEADER
    r.leader = r.id
    for pr in r.prs.values():
        pr.recent_active = True
    r.prs[r.id].become_replicate()
    # A no-op entry of the new term: committing it commits all earlier entries and
    # lets ReadIndex serve reads (the commit index is then known to be current).
    r.append_local([Entry(r.log.last_index() + 1, r.term, b"")])


def campaign(r: RaftCore, *, pre: bool, transfer: bool = False) -> None:
    r.campaigns += 1
    if pre:
        become_pre_candidate(r)
        term, mtype = r.term + 1, MsgType.PRE_VOTE
    else:
        become_candidate(r)
        term, mtype = r.term, MsgType.VOTE
    r.votes[r.id] = True
    if r.vote_outcome() == VoteResult.WON:
        if pre:
            campaign(r, pre=False)
        else:
            become_leader(r)
        return
    last_index, last_term = r.log.last_index(), r.log.last_term()
    ctx = CAMPAIGN_TRANSFER if transfer else 0
    for p in sorted(r.conf.voters):
        if p != r.id:
            r.send(Message(mtype, to=p, frm=r.id, term=term, index=last_index,
                           log_term=last_term, ctx=ctx))


# --- ticks ---------------------------------------------------------------------------


def tick_election(r: RaftCore) -> None:
    r.election_elapsed += 1
    if r.promotable() and r.election_elapsed >= r.randomized_timeout:
        r.election_elapsed = 0
        campaign(r, pre=r.cfg.pre_vote)


def tick_leader(r: RaftCore) -> None:
    r.heartbeat_elapsed += 1
    r.election_elapsed += 1
    if r.election_elapsed >= r.cfg.election_ticks:
        r.election_elapsed = 0
        if r.cfg.check_quorum and not _quorum_active(r):
            become_follower(r, r.term, NONE)
            return
        r.transferee = NONE  # a transfer that has not finished in time is abandoned
    if r.heartbeat_elapsed >= r.cfg.heartbeat_ticks:
        r.heartbeat_elapsed = 0
        bcast_heartbeat(r)
        _forget_leaving(r)


def _forget_leaving(r: RaftCore) -> None:
    """Stop replicating to removed nodes once their removal is committed and they were
    told so: a heartbeat carries the commit index up to what the node holds, so one that
    holds the removal has now heard it is committed (best effort: an election timeout
    after the commit, they are dropped anyway)."""
    if not r.leaving or r.pending_conf_index() > r.log.committed:
        return
    r.leaving_for += r.cfg.heartbeat_ticks
    for p in list(r.leaving):
        pr = r.prs.get(p)
        if pr is None or pr.match >= r.pending_conf_index() or \
                r.leaving_for > r.cfg.election_ticks:
            r.prs.pop(p, None)
            r.leaving.discard(p)


def _quorum_active(r: RaftCore) -> bool:
    active = 0
    for p in r.conf.voters:
        pr = r.prs.get(p)
        if pr is not None and (p == r.id or pr.recent_active):
            active += 1
    for p, pr in r.prs.items():
        if p != r.id:
            pr.recent_active = False
    return active >= r.quorum()


# --- follower and candidates ----------------------------------------------------


def _step_follower(r: RaftCore, m: Message) -> None:
    t = m.type
    if t == MsgType.APP:
        _accept_leader(r, m)
        _handle_append(r, m)
    elif t == MsgType.HEARTBEAT:
        _accept_leader(r, m)
        r.log.commit_to(min(m.commit, r.log.last_index()))
        r.send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, frm=r.id, term=r.term, ctx=m.ctx))
    elif t == MsgType.SNAP:
        _accept_leader(r, m)
        _handle_snapshot(r, m)
    elif t == MsgType.TIMEOUT_NOW and r.promotable():
        campaign(r, pre=False, transfer=True)
    elif t == MsgType.READ_INDEX_RESP:
        _forwarded_read_answered(r, m)
    elif t == MsgType.READ_INDEX:
        _refuse_read(r, m)  # not the leader (any more): the asker drops the read


def _step_candidate(r: RaftCore, m: Message) -> None:
    t = m.type
    if t in _FROM_LEADER:
        become_follower(r, m.term, m.frm)
        _step_follower(r, m)
        return
    if t == MsgType.READ_INDEX:
        _refuse_read(r, m)
        return
    expected = MsgType.PRE_VOTE_RESP if r.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
    if t != expected:
        return
    r.votes.setdefault(m.frm, not m.reject)
    outcome = r.vote_outcome()
    if outcome == VoteResult.WON:
        if r.role == Role.PRE_CANDIDATE:
            campaign(r, pre=False)
        else:
            become_leader(r)
    elif outcome == VoteResult.LOST:
        become_follower(r, r.term, NONE)


def _accept_leader(r: RaftCore, m: Message) -> None:
    r.election_elapsed = 0
    r.leader = m.frm
    r.leader_contact = r.ticks


def _handle_append(r: RaftCore, m: Message) -> None:
    log = r.log
    if m.index < log.committed:
        r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term,
                       index=log.committed, ctx=m.ctx))
        return
    last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
    if last_new is not None:
        if m.entries:
            r.note_entries(m.entries)
        elif m.hint == APP_QUIET:
            return  # (the news of a commit: the leader knows all an answer would say)
        r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term,
                       index=last_new, ctx=m.ctx))
        return
    hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
    r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term, index=m.index,
                   reject=True, hint=hint, log_term=hint_term, ctx=m.ctx))


def _handle_snapshot(r: RaftCore, m: Message) -> None:
    s = m.snapshot
    if s is None:
        return
    log = r.log
    if s.index <= log.committed:
        index = log.committed
    elif log.match_term(s.index, s.term):
        log.commit_to(s.index)  # we already hold the entries it covers
        index = s.index  # not last_index(): entries past the snapshot may be stale
    else:
        log.restore(s.index, s.term)
        r.restore_conf(s.index, s.conf)
        r.snapshot_to_install = s
        r.latest_snapshot = s
        index = s.index
    r.send(Message(MsgType.APP_RESP, to=m.frm, frm=r.id, term=r.term, index=index))


# --- leader ----------------------------------------------------------------------


def _step_leader(r: RaftCore, m: Message) -> None:
    pr = r.prs.get(m.frm)
    if pr is None:
        if m.type == MsgType.READ_INDEX:
            _refuse_read(r, m)  # (a removed node: it drops the read at once)
        return
    pr.heard_at = r.ticks
    if m.type == MsgType.APP_RESP:
        pr.recent_active = True
        if m.reject:
            _handle_append_reject(r, m)
        else:
            _handle_append_success(r, m)
        _ack_read(r, m.frm, m.ctx)
    elif m.type == MsgType.HEARTBEAT_RESP:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            # The follower is alive but its window may be full of lost appends: make
            # room for one more, which it answers (a rejection resets the stream).
            pr.inflights.free_first_one()
        if pr.match < r.log.last_index():
            send_append(r, m.frm)
        _ack_read(r, m.frm, m.ctx)
    elif m.type == MsgType.READ_INDEX:
        _leader_read_index(r, m)


def _handle_append_reject(r: RaftCore, m: Message) -> None:
    pr = r.prs[m.frm]
    next_probe = m.hint
    if m.log_term > 0:
        next_probe, _ = r.log.find_conflict_by_term(m.hint, m.log_term)
    if pr.maybe_decrease_to(m.index, next_probe):
        if pr.state == ProgressState.REPLICATE:
            pr.become_probe()
        send_append(r, m.frm)


def _handle_append_success(r: RaftCore, m: Message) -> None:
    if m.frm == r.id or m.index > r.log.last_index():
        return  # (no follower holds more than the leader's log: a forged answer)
    pr = r.prs[m.frm]
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state == ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
        pr.become_probe()
        pr.become_replicate()
    elif pr.state == ProgressState.REPLICATE:
        pr.inflights.free_le(m.index)
    maybe_commit(r)
    if not r.bcast_pending or was_paused:
        # (a pending broadcast reaches this follower anyway when the Ready is built)
        _send_all(r, m.frm, send_if_empty=False)
    if m.frm == r.transferee and pr.match == r.log.last_index():
        r.send(Message(MsgType.TIMEOUT_NOW, to=m.frm, frm=r.id, term=r.term))


def maybe_commit(r: RaftCore) -> bool:
    """Advance the commit index to what a quorum holds, if that entry is of this term."""
    index = r.committed_by_quorum()
    if index <= r.log.committed or r.log.term(index) != r.term:
        return False
    first_in_term = r.log.term(r.log.committed) != r.term
    r.log.commit_to(index)
    r.bcast_pending = True  # followers learn the new commit index
    if r.pending_conf_index() <= index:
        if r.id not in r.conf.voters:
            r.step_down_pending = True  # our removal is committed (see step_down_removed)
    if first_in_term and r.reads_before_commit:
        waiting, r.reads_before_commit = r.reads_before_commit, []
        for ctx, frm in waiting:
            register_read(r, ctx, frm)
    return True


def send_append(r: RaftCore, to: int, *, send_if_empty: bool = True) -> bool:
    """Send the next batch of entries to ``to`` (or a snapshot); False if nothing sent."""
    pr = r.prs[to]
    if pr.is_paused():
        return False
    prev = pr.next - 1
    prev_term = r.log.term(prev)
    if prev_term is None:
        return _send_snapshot(r, to)
    last = r.log.last_index()
    entries = r.log.slice(pr.next, last + 1, r.cfg.max_msg_bytes) if pr.next <= last else []
    if not entries and not send_if_empty:
        return False
    if entries:
        if pr.state == ProgressState.REPLICATE:
            pr.next = entries[-1].index + 1
            pr.inflights.add(entries[-1].index, sum(e.size_bytes() for e in entries))
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
    elif pr.state == ProgressState.PROBE:
        pr.probe_sent = True
    # An append with nothing new for a follower that acknowledged all it was sent (every
    # entry, the latest read round) only tells it of a commit: an answer could repeat
    # only what the leader knows, so it asks for none unless the follower rejects it (a
    # lost answer or entry since is found by the next heartbeat: HEARTBEAT_RESP).
    quiet = (not entries and pr.state == ProgressState.REPLICATE and pr.match == prev
             and pr.read_ack >= r.read_seq)
    r.send(Message(MsgType.APP, to=to, frm=r.id, term=r.term, index=prev, log_term=prev_term,
                   commit=r.log.committed, ctx=r.read_seq, entries=entries,
                   hint=APP_QUIET if quiet else 0))
    return True


def _send_all(r: RaftCore, to: int, *, send_if_empty: bool) -> None:
    """Stream to ``to`` until it is caught up or its in-flight window is full."""
    pr = r.prs[to]
    while send_append(r, to, send_if_empty=send_if_empty):
        send_if_empty = False
        if pr.state != ProgressState.REPLICATE or pr.next > r.log.last_index():
            break


def _send_snapshot(r: RaftCore, to: int) -> bool:
    pr = r.prs[to]
    snap = r.latest_snapshot
    if not pr.recent_active or snap is None or snap.index < r.log.snapshot_index:
        return False
    pr.become_snapshot(snap.index)
    r.send(Message(MsgType.SNAP, to=to, frm=r.id, term=r.term, snapshot=snap))
    return True


def bcast_append(r: RaftCore) -> None:
    for p in r.prs:
        if p != r.id:
            _send_all(r, p, send_if_empty=True)


def bcast_heartbeat(r: RaftCore) -> None:
    for p, pr in r.prs.items():
        if p != r.id:
            r.send(Message(MsgType.HEARTBEAT, to=p, frm=r.id, term=r.term,
                           commit=min(pr.match, r.log.committed), ctx=r.read_seq))


# --- linearizable reads -------------------------------------------------------------


@dataclass(slots=True)
class PendingRead:
    seq: int
    ctx: int
    index: int
    frm: int
    """The replica that asked: this leader, or a follower that forwarded the read."""


def register_read(r: RaftCore, ctx: int, frm: int) -> None:
    r.read_seq += 1
    r.prs[r.id].read_ack = r.read_seq
    if r.conf.voters == {r.id}:
        _read_confirmed(r, ctx, r.log.committed, frm)
        return
    r.pending_reads.append(PendingRead(r.read_seq, ctx, r.log.committed, frm))
    r.read_bcast_pending = True


def _read_confirmed(r: RaftCore, ctx: int, index: int, frm: int) -> None:
    if frm == r.id:
        r.add_read_state(ctx, index)
    else:
        r.send(Message(MsgType.READ_INDEX_RESP, to=frm, frm=r.id, term=r.term, ctx=ctx,
                       index=index))


def _leader_read_index(r: RaftCore, m: Message) -> None:
    """A follower forwarded a read: confirm leadership as for one of our own, then
    answer with the commit index at registration."""
    if r.log.term(r.log.committed) != r.term:
        r.reads_before_commit.append((m.ctx, m.frm))
    else:
        register_read(r, m.ctx, m.frm)


def _refuse_read(r: RaftCore, m: Message) -> None:
    r.send(Message(MsgType.READ_INDEX_RESP, to=m.frm, frm=r.id, term=r.term, ctx=m.ctx,
                   reject=True))


def _forwarded_read_answered(r: RaftCore, m: Message) -> None:
    if m.frm != r.leader or r.forwarded_reads.pop(m.ctx, None) is None:
        return  # dropped already (timed out), or from a node that no longer leads us
    if m.reject:
        r.dropped_reads.append(m.ctx)
    else:
        r.add_read_state(m.ctx, m.index)


def expire_forwarded_reads(r: RaftCore) -> None:
    """Drop forwarded reads unanswered for an election timeout (a lost message, or a
    leader that lost its leadership without this replica noticing yet)."""
    horizon = r.ticks - r.cfg.election_ticks
    late = [ctx for ctx, sent in r.forwarded_reads.items() if sent <= horizon]
    for ctx in late:
        del r.forwarded_reads[ctx]
        r.dropped_reads.append(ctx)


def _ack_read(r: RaftCore, peer: int, seq: int) -> None:
    pr = r.prs[peer]
    if seq <= pr.read_ack:
        return
    pr.read_ack = seq
    recheck_reads(r)


def recheck_reads(r: RaftCore) -> None:
    """Serve every pending read a quorum of the current voters has confirmed."""
    if not r.pending_reads:
        return
    confirmed = committed_index(r.conf.voters, {p: q.read_ack for p, q in r.prs.items()})
    while r.pending_reads and r.pending_reads[0].seq <= confirmed:
        rd = r.pending_reads.popleft()
        _read_confirmed(r, rd.ctx, rd.index, rd.frm)


def step_down_removed(r: RaftCore) -> None:
    """A leader whose removal is committed hands over to the most caught-up voter.

    It has already broadcast the commit index (``ready`` sends that first); the voter it
    picks campaigns at once on TimeoutNow, otherwise the group elects one on timeout.
    """
    best = max(((pr.match, p) for p, pr in r.prs.items() if p in r.conf.voters), default=None)
    if best is not None and best[0] == r.log.last_index():
        r.transfer_term = r.term
        r.send(Message(MsgType.TIMEOUT_NOW, to=best[1], frm=r.id, term=r.term))
    become_follower(r, r.term, NONE)


def transfer_leadership(r: RaftCore, target: int) -> None:
    if r.role != Role.LEADER:
        raise NotLeader(r.leader, r.term)
    if target == r.id or target not in r.conf.voters:
        raise ValueError(f"cannot transfer leadership to {target}")
    r.transferee = target
    r.transfer_term = r.term
    r.election_elapsed = 0
    if r.prs[target].match == r.log.last_index():
        r.send(Message(MsgType.TIMEOUT_NOW, to=target, frm=r.id, term=r.term))
    else:
        send_append(r, target)


_ROLE_STEP: dict[Role, Callable[[RaftCore, Message], None]] = {
    Role.FOLLOWER: _step_follower,
    Role.PRE_CANDIDATE: _step_candidate,
    Role.CANDIDATE: _step_candidate,
    Role.LEADER: _step_leader,
}
