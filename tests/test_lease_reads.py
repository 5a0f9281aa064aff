"""Leader leases (``replica.lease_reads``): the core's rules and the runtime's reads.

The core rules are the two that the lease argument in ``kvraft.runtime.lease`` rests
on. A replica that has just started ignores votes for an election timeout. A leader
stops trusting its lease once it begins a transfer. The in-process tests run three
real nodes on 127.0.0.1. Leased reads skip the quorum round. An isolated leader's
leased reads stop before the rest of the group can elect a new leader and commit a
write, so no read returns a value that an acknowledged write has replaced.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from kvraft import AsyncClient, errors
from kvraft.config import SettingError, settings_from
from kvraft.raft import (
    NONE,
    Config,
    ConfState,
    InitialState,
    Message,
    MsgType,
    RaftCore,
    Role,
)
from kvraft.raft.roles import CAMPAIGN_TRANSFER
from kvraft.runtime.lease import Lease, lease_seconds
from kvraft.runtime.node import Node
from kvraft.runtime.replica import Replica
from kvraft.testing.inprocess import leader_of, nodes_running, single_node, until
from kvraft.testing.raftcore import commit_through, win_election

VOTERS = ConfState(frozenset({1, 2, 3}), frozenset())


def _core(vote_lease: bool) -> RaftCore:
    return RaftCore(Config(id=2, vote_lease=vote_lease), random.Random(0),
                    InitialState(conf=VOTERS))


def _answers(core: RaftCore, m: Message) -> list[Message]:
    core.step(m)
    out, core.msgs = core.msgs, []
    return out


# --- the core ------------------------------------------------------------------------


@pytest.mark.parametrize("mtype", [MsgType.PRE_VOTE, MsgType.VOTE])
def test_a_replica_that_just_started_waits_an_election_timeout_before_voting(
        mtype: MsgType) -> None:
    core = _core(vote_lease=True)
    ask = Message(mtype, to=2, frm=3, term=5, index=0, log_term=0)
    for _ in range(core.cfg.election_ticks - 1):
        assert _answers(core, ask) == [], "voted while a leader may still count on it"
        assert core.term == 0 and core.vote == NONE
        core.tick()
    assert _answers(core, ask) == []
    core.tick()  # election_ticks ticks since it started
    (resp,) = _answers(core, ask)
    assert resp.type in (MsgType.PRE_VOTE_RESP, MsgType.VOTE_RESP) and not resp.reject
    # Without the rule (the core's default) it answers at once.
    (resp,) = _answers(_core(vote_lease=False), ask)
    assert not resp.reject


def test_a_transfer_vote_still_overrides_the_startup_lease() -> None:
    core = _core(vote_lease=True)
    (resp,) = _answers(core, Message(MsgType.VOTE, to=2, frm=3, term=5, index=0, log_term=0,
                                     ctx=CAMPAIGN_TRANSFER))
    assert resp.type == MsgType.VOTE_RESP and not resp.reject and core.vote == 3


def test_a_higher_term_answer_does_not_end_the_refusal() -> None:
    """A replica that heard from its leader and then gets a higher-term answer (its
    own old pre-vote refused, say) has no leader any more, but still ignores votes until
    an election timeout has passed since the leader's message."""
    core = _core(vote_lease=True)
    for _ in range(core.cfg.election_ticks):
        core.tick()  # past the startup window
    _answers(core, Message(MsgType.HEARTBEAT, to=2, frm=1, term=5, commit=0))
    assert core.leader == 1 and core.term == 5
    _answers(core, Message(MsgType.PRE_VOTE_RESP, to=2, frm=3, term=6, reject=True))
    assert core.term == 6 and core.leader == NONE
    ask = Message(MsgType.VOTE, to=2, frm=3, term=7, index=0, log_term=0)
    for _ in range(core.cfg.election_ticks - 1):
        core.tick()
        core.msgs.clear()  # (its own pre-campaign, if its timer fired)
        assert _answers(core, ask) == [] and core.vote == NONE and core.term == 6
    core.tick()
    core.msgs.clear()
    (resp,) = [m for m in _answers(core, ask) if m.to == 3]
    assert resp.type == MsgType.VOTE_RESP and not resp.reject and core.vote == 3


def _leader(commit: bool = True) -> RaftCore:
    """Node 1, leader of term 1; with ``commit``, node 2's answer commits its first
    entry."""
    core = RaftCore(Config(id=1), random.Random(0), InitialState(conf=VOTERS))
    win_election(core, (2, 3))
    if commit:
        commit_through(core, 2)
    return core


def test_the_lease_may_hold_only_for_a_leader_that_committed_and_is_not_handing_over() -> None:
    follower = _core(vote_lease=True)
    assert not follower.lease_may_hold()
    leader = _leader()
    assert leader.lease_may_hold()
    leader.transfer_leadership(2)
    assert not leader.lease_may_hold()
    # Even once the transfer is abandoned, a TimeoutNow sent in this term may still land.
    leader.transferee = NONE
    assert not leader.lease_may_hold()


def test_a_new_leader_has_no_lease_before_it_commits_in_its_term() -> None:
    core = _leader(commit=False)
    assert core.role == Role.LEADER and core.log.term(core.log.committed) != core.term
    assert not core.lease_may_hold()
    last = core.log.last_index()
    core.step(Message(MsgType.APP_RESP, to=1, frm=2, term=core.term, index=last))
    assert core.lease_may_hold()


# --- settings and the lease's length -------------------------------------------------


def test_the_lease_is_shorter_than_any_election_can_be() -> None:
    # A follower votes again no sooner than (election_ticks - 1) ticks after the round.
    for tick_ms, ticks in ((50, 10), (10, 3), (100, 20)):
        assert lease_seconds(tick_ms, ticks) < (ticks - 1) * tick_ms / 1000 - 0.001
    lease = Lease(0.36)
    lease.confirmed(100.0, 3)
    assert lease.valid(3, 100.35) and not lease.valid(3, 100.36) and not lease.valid(4, 100.1)
    lease.confirmed(99.0, 3)  # an older round does not shorten it
    assert lease.until == pytest.approx(100.36)
    assert lease.wants_renewal(100.2) and not lease.wants_renewal(100.1)


def test_lease_reads_need_three_election_ticks() -> None:
    assert settings_from({"lease_reads": 1}).replica.lease_reads == 1
    with pytest.raises(SettingError, match="election_ticks >= 3"):
        settings_from({"lease_reads": 1, "election_ticks": 2, "heartbeat_ticks": 1})
    with pytest.raises(SettingError):
        settings_from({"lease_reads": 2})


# --- three real nodes ----------------------------------------------------------------


async def _written(nodes: list[Node], addrs: dict[int, str], key: str, value: str
                   ) -> tuple[Node, Replica, Lease]:
    """Write ``key`` through a client; the leader that took it, its replica and lease."""
    async with AsyncClient(",".join(addrs.values())) as c:
        await c.put(key, value)
    lead = leader_of(nodes)
    assert lead is not None
    replica = lead.replicas[1]
    assert replica.lease is not None and replica.core is not None
    return lead, replica, replica.lease


async def test_leased_reads_skip_the_quorum_round(tmp_path: Path) -> None:
    async with nodes_running(tmp_path, lease_reads=True) as (nodes, addrs):
        lead, replica, lease = await _written(nodes, addrs, "k", "v1")
        assert replica.core is not None
        async with AsyncClient(",".join(addrs.values())) as c:
            rounds0, reads0 = replica.core.read_seq, lease.reads
            t0 = time.monotonic()
            for _ in range(151):
                assert await lead.get("k", timeout_s=10.0) == "v1"
            await c.put("k", "v2")  # a write in between is seen at once
            assert await lead.get("k", timeout_s=10.0) == "v2"
            elapsed = time.monotonic() - t0
            rounds = replica.core.read_seq - rounds0
            served = lease.reads - reads0
        # Each read without a lease starts a round; with one, a round only renews it
        # (one in flight at a time, after half the lease has gone by).
        assert served >= 1
        assert rounds <= 152 - served + 2 + elapsed / (lease.duration_s / 2), (
            rounds, served, elapsed)
        assert served > 75, f"only {served} of 152 reads were leased ({elapsed:.2f}s)"
        assert replica.status()["lease"]["reads"] == lease.reads


async def test_an_isolated_leader_stops_leased_reads_before_a_new_leader_writes(
        tmp_path: Path) -> None:
    async with nodes_running(tmp_path, lease_reads=True) as (nodes, addrs):
        old, old_replica, lease = await _written(nodes, addrs, "x", "old")
        # A read before the isolation: its round gives the leader a lease.
        assert await old.get("x", timeout_s=10.0) == "old"
        assert lease.term == old_replica.soft.term
        others = [n for n in nodes if n is not old]
        ids = {n.cfg.node_id for n in others}
        assert old.transport is not None
        old.transport.faults.blocked_out |= ids
        old.transport.faults.blocked_in |= ids
        isolated_at = time.monotonic()
        reads: list[tuple[float, float, str | None]] = []
        stop = asyncio.Event()

        async def read_old() -> None:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    value = await old.get("x", timeout_s=0.2)
                except errors.Unavailable:  # (NotLeader once it steps down)
                    value = None
                reads.append((start, time.monotonic(), value))
                await asyncio.sleep(0.002)

        reader = asyncio.get_running_loop().create_task(read_old())
        await until(lambda: leader_of(others) is not None, "the others elect a leader")
        other_addrs = ",".join(addrs[n.cfg.node_id] for n in others)
        async with AsyncClient(other_addrs, timeout_s=30.0) as c:
            await c.put("x", "new")
        written_at = time.monotonic()
        await until(lambda: any(s > written_at for s, _, _ in reads), "one more read")
        stop.set()
        await reader
        served = [(s, e, v) for s, e, v in reads if v is not None]
        # Reads that began after the new value was acknowledged never saw the old one.
        stale = [(s - written_at, v) for s, _, v in served if s > written_at and v == "old"]
        assert not stale, f"stale reads from the isolated leader: {stale}"
        # And none was served once a follower may have voted again: (election_ticks -
        # 1) ticks after the last message it had from the old leader (no round could
        # renew the lease after the isolation).
        r = old.cfg.settings.replica
        bound = (r.election_ticks - 1) * r.tick_ms / 1000
        late = [s - isolated_at for s, _, v in served if s > isolated_at + bound]
        assert not late, f"reads served {late}s after the isolation (bound {bound}s)"
        assert all(v == "old" for _, _, v in served)


async def test_ticks_are_never_closer_than_the_tick_interval(tmp_path: Path) -> None:
    """After the event loop stalls for several ticks, the missed ticks are dropped, not
    run in a burst: a follower's election timeout never runs fast."""
    node = await single_node(tmp_path / "n1")
    try:
        replica = node.replicas[1]
        core = replica.core
        assert core is not None
        interval = replica.settings.tick_ms / 1000
        times: list[float] = []
        tick = core.tick

        def timed_tick() -> None:
            times.append(time.monotonic())
            tick()

        core.tick = timed_tick  # type: ignore[method-assign]
        await until(lambda: len(times) >= 3, "three ticks")
        time.sleep(5 * interval)  # the event loop stalls for five ticks
        n = len(times)
        await until(lambda: len(times) >= n + 5, "five more ticks")
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= interval - 0.001, (interval, gaps)
        assert max(gaps) >= 5 * interval  # (the stall is in there)
    finally:
        await node.stop()
