"""Follower reads: a follower asks its leader for a read index and serves the read.

The core tests drive one leader and one follower by hand. The simulator runs send half
of the reads to followers under every fault and check each read against the writes
acknowledged before it began; two deliberately broken cores show that check fails when
a follower answers from its own commit index, or a leader answers without its quorum
round. The in-process tests run three real nodes on 127.0.0.1 and read over HTTP, the
client stream and the client library; with leader leases on, the leader answers a
follower's request at once, and a leader cut off with one follower (five nodes) must
not give it an index older than a write the others acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvraft import AsyncClient, errors
from kvraft.raft import (
    NONE,
    Config,
    ConfState,
    InitialState,
    Message,
    MsgType,
    NotLeader,
    RaftCore,
    Role,
    roles,
)
from kvraft.runtime.node import Node
from kvraft.sim import make_cluster, run_seed
from kvraft.testing.inprocess import leader_of, nodes_running, until
from kvraft.testing.raftcore import commit_through, win_election

VOTERS = ConfState(frozenset({1, 2, 3}), frozenset())


# --- the core ------------------------------------------------------------------------


def _leader() -> RaftCore:
    """Node 1, leader of term 1, its first entry committed by node 2's answer."""
    core = RaftCore(Config(id=1), random.Random(0), InitialState(conf=VOTERS))
    win_election(core, (2, 3))
    commit_through(core, 2)
    core.msgs.clear()
    return core


def _follower(term: int = 1, leader: int = 1) -> RaftCore:
    """Node 2, follower of ``leader`` in ``term`` (it heard a heartbeat)."""
    core = RaftCore(Config(id=2), random.Random(0), InitialState(conf=VOTERS))
    core.step(Message(MsgType.HEARTBEAT, to=2, frm=leader, term=term))
    assert core.role == Role.FOLLOWER and core.leader == leader
    core.msgs.clear()
    return core


def _sent(core: RaftCore, mtype: MsgType) -> list[Message]:
    out = [m for m in core.msgs if m.type == mtype]
    core.msgs = [m for m in core.msgs if m.type != mtype]
    return out


def test_a_follower_forwards_its_read_and_serves_the_leaders_index() -> None:
    f = _follower()
    f.read_index(7, forward=True)
    (ask,) = _sent(f, MsgType.READ_INDEX)
    assert (ask.to, ask.ctx, ask.term) == (1, 7, 1)
    assert f.ready().read_states == []  # nothing yet: the leader has not answered
    f.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=1, term=1, ctx=7, index=5))
    rd = f.ready()
    assert [(r.ctx, r.index) for r in rd.read_states] == [(7, 5)]
    assert f.forwarded_reads == {}
    # Without forward=True, a follower still refuses (the default: leader reads only).
    with pytest.raises(NotLeader) as ei:
        f.read_index(8)
    assert ei.value.leader == 1


def test_a_follower_without_a_leader_refuses() -> None:
    core = RaftCore(Config(id=2), random.Random(0), InitialState(conf=VOTERS))
    assert core.leader == NONE
    with pytest.raises(NotLeader):
        core.read_index(1, forward=True)
    assert core.msgs == []


def test_the_leader_answers_a_forwarded_read_only_after_a_quorum_round() -> None:
    lead = _leader()
    commit = lead.log.committed
    lead.step(Message(MsgType.READ_INDEX, to=1, frm=2, term=1, ctx=7))
    assert _sent(lead, MsgType.READ_INDEX_RESP) == []
    rd = lead.ready()
    beats = [m for m in rd.messages if m.type == MsgType.HEARTBEAT]
    assert {m.to for m in beats} == {2, 3}
    lead.advance(rd)
    (beat,) = [m for m in beats if m.to == 3]
    lead.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=3, term=1, ctx=beat.ctx))
    (resp,) = _sent(lead, MsgType.READ_INDEX_RESP)
    assert (resp.to, resp.ctx, resp.index, resp.reject) == (2, 7, commit, False)
    # The answer goes to the follower; the leader itself serves nothing.
    assert lead.ready().read_states == []


def test_a_forwarded_read_waits_for_the_new_leaders_first_commit() -> None:
    lead = _leader()
    # A fresh leader of a higher term, with its no-op not yet committed.
    lead.step(Message(MsgType.HEARTBEAT, to=1, frm=3, term=2))
    assert lead.role == Role.FOLLOWER
    lead.msgs.clear()
    win_election(lead, (2,))
    assert lead.log.term(lead.log.committed) != lead.term
    lead.msgs.clear()
    lead.step(Message(MsgType.READ_INDEX, to=1, frm=2, term=lead.term, ctx=9))
    assert lead.reads_before_commit == [(9, 2)] and not lead.pending_reads
    lead.step(Message(MsgType.APP_RESP, to=1, frm=2, term=lead.term,
                      index=lead.log.last_index()))
    assert lead.reads_before_commit == [] and [r.frm for r in lead.pending_reads] == [2]


def test_a_replica_that_does_not_lead_refuses_and_the_asker_drops_the_read() -> None:
    other = _follower()  # node 2 as the one asked: it is a follower, not a leader
    other.step(Message(MsgType.READ_INDEX, to=2, frm=3, term=1, ctx=4))
    (no,) = _sent(other, MsgType.READ_INDEX_RESP)
    assert no.reject and no.to == 3 and no.ctx == 4
    f = _follower()
    f.read_index(4, forward=True)
    f.msgs.clear()
    f.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=1, term=1, ctx=4, reject=True))
    rd = f.ready()
    assert rd.dropped_reads == [4] and rd.read_states == []


def test_an_answer_from_a_node_that_is_not_our_leader_is_ignored() -> None:
    f = _follower()
    f.read_index(4, forward=True)
    f.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=3, term=1, ctx=4, index=99))
    assert f.ready().read_states == [] and 4 in f.forwarded_reads


def test_an_unanswered_read_is_dropped_after_an_election_timeout() -> None:
    f = _follower()
    f.read_index(4, forward=True)
    for _ in range(f.cfg.election_ticks - 1):
        f.tick()
        # (keep it a follower of node 1: the heartbeats come, the answer never does)
        f.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    assert 4 in f.forwarded_reads
    f.tick()
    assert f.ready().dropped_reads == [4]
    # A late answer changes nothing.
    f.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=1, term=1, ctx=4, index=3))
    assert f.ready().read_states == []


def test_a_new_term_drops_the_forwarded_reads() -> None:
    f = _follower()
    f.read_index(4, forward=True)
    f.step(Message(MsgType.HEARTBEAT, to=2, frm=3, term=2))
    assert f.leader == 3
    rd = f.ready()
    assert rd.dropped_reads == [4]
    # The old leader's answer, in the old term, is ignored.
    f.step(Message(MsgType.READ_INDEX_RESP, to=2, frm=1, term=1, ctx=4, index=3))
    assert f.ready().read_states == []


def test_a_leader_that_steps_down_drops_forwarded_reads_silently() -> None:
    lead = _leader()
    lead.read_index(1)  # its own read
    lead.step(Message(MsgType.READ_INDEX, to=1, frm=2, term=1, ctx=7))
    lead.step(Message(MsgType.HEARTBEAT, to=1, frm=3, term=2))
    # Its own read is dropped (the runtime redirects it); node 2 drops ctx 7 itself.
    assert lead.ready().dropped_reads == [1]


def test_answering_a_read_index_at_once_needs_a_leader_that_may_hold_a_lease() -> None:
    lead = _leader()
    ask = Message(MsgType.READ_INDEX, to=1, frm=2, term=1, ctx=5)
    assert lead.answer_read_index(ask, lead.log.committed)
    (resp,) = _sent(lead, MsgType.READ_INDEX_RESP)
    assert (resp.to, resp.ctx, resp.index, resp.reject) == (2, 5, lead.log.committed, False)
    assert lead.pending_reads == deque() and not lead.read_bcast_pending  # no round
    # Not from a member, not of this term, not a READ_INDEX: the core steps it as usual.
    for m in (Message(MsgType.READ_INDEX, to=1, frm=9, term=1, ctx=5),
              Message(MsgType.READ_INDEX, to=1, frm=2, term=0, ctx=5),
              Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=1, ctx=5)):
        assert not lead.answer_read_index(m, lead.log.committed)
    # A leader handing over (the TimeoutNow may land at any time) answers no more.
    lead.transfer_leadership(2)
    assert not lead.answer_read_index(ask, lead.log.committed)
    assert not _follower().answer_read_index(
        Message(MsgType.READ_INDEX, to=2, frm=3, term=1, ctx=5), 0)
    assert not [m for m in lead.msgs if m.type == MsgType.READ_INDEX_RESP]


# --- simulation ----------------------------------------------------------------------


NO_SNAPSHOTS: dict[str, Any] = {"snapshot_every": 0}


@pytest.mark.parametrize("seed,nodes,membership", [
    (301, 3, False), (302, 3, False), (303, 5, False), (304, 5, False),
    (305, 3, True), (306, 5, True)])
def test_follower_reads_stay_linearizable_in_the_simulator(
        seed: int, nodes: int, membership: bool) -> None:
    print(f"\nseed={seed} nodes={nodes} membership={membership} follower_reads=0.5")
    c = make_cluster(seed, nodes, 600, membership=membership, follower_reads=0.5)
    print(c.cfg.describe())
    c.run()  # raises SafetyViolation on a stale read (or any other broken invariant)
    print(c.summary())
    assert c.client.stats["follower_reads"] > 0, "no read was served by a follower"


class OwnCommitFollower(RaftCore):
    """Broken: a follower serves a read at its own commit index, asking nobody."""

    def read_index(self, ctx: int, *, forward: bool = False) -> None:
        if forward and self.role == Role.FOLLOWER and self.leader != NONE:
            self.add_read_state(ctx, self.log.committed)
            return
        super().read_index(ctx, forward=forward)


def test_checkers_catch_a_follower_serving_its_own_commit_index() -> None:
    failed = []
    for seed in (1, 2, 3):
        print(f"seed={seed}")
        r = run_seed(seed, 3, 600, core_factory=OwnCommitFollower, follower_reads=0.5,
                     **NO_SNAPSHOTS)
        print(r.error)
        failed.append(not r.ok and r.error.startswith("[linearizable-read]"))
    assert all(failed), failed


def _answer_at_once(r: RaftCore, m: Message) -> None:
    """_leader_read_index without the quorum round."""
    roles._read_confirmed(r, m.ctx, r.log.committed, m.frm)


def test_checkers_catch_a_leader_answering_without_a_quorum_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "_leader_read_index", _answer_at_once)
    failed = []
    for seed in (1, 13, 16, 19):
        print(f"seed={seed} check_quorum=False")
        r = run_seed(seed, 3, 600, follower_reads=0.5, check_quorum=False, **NO_SNAPSHOTS)
        print(r.error)
        failed.append(not r.ok and r.error.startswith("[linearizable-read]"))
    assert all(failed), failed


# --- three real nodes ----------------------------------------------------------------


async def _put(addrs: dict[int, str], key: str, value: str) -> None:
    async with AsyncClient(",".join(addrs.values())) as c:
        await c.put(key, value)


async def _follower_of(nodes: list[Node]) -> tuple[Node, Node]:
    """(leader, a follower that knows it), once there is one."""
    pair: tuple[Node, Node] | None = None

    def found() -> bool:
        nonlocal pair
        lead = leader_of(nodes)
        if lead is None:
            return False
        lid = lead.cfg.node_id
        f = next((n for n in nodes if n is not lead and n.replicas[1].soft.leader == lid),
                 None)
        pair = (lead, f) if f is not None else None
        return pair is not None

    await until(found, "a follower knows its leader")
    assert pair is not None
    return pair


async def test_a_follower_serves_reads_over_http_and_the_stream(tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        async with AsyncClient(",".join(addrs.values())) as c, \
                aiohttp.ClientSession() as http:

            async def follower_read(path: str) -> tuple[int, Any, Node]:
                """Status and body of a follower read at a follower that knows its
                leader. A leader change in between makes it redirect: ask again."""
                for _ in range(20):
                    _, f = await _follower_of(nodes)
                    url = f"http://{addrs[f.cfg.node_id]}{path}"
                    async with http.get(url, allow_redirects=False) as r:
                        if r.status != 307 and f.replicas[1].soft.role != Role.LEADER:
                            return r.status, await r.json(), f
                raise AssertionError(f"{path}: redirected 20 times")

            for i in range(5):
                # A write acknowledged by the leader is seen by a follower's next read.
                await c.put("k", f"v{i}")
                status, body, f = await follower_read("/v1/kv/k?read=follower")
                assert (status, body["value"]) == (200, f"v{i}"), body
            served0 = sum(n.replicas[1].follower_reads for n in nodes)
            status, body, _ = await follower_read("/v1/kv/absent?read=follower")
            assert status == 404 and body["error"] == "not_found"
            status, body, f = await follower_read("/v1/scan?start=&read=follower")
            assert status == 200 and [k for k, _ in body["items"]] == ["k"], body
            assert sum(n.replicas[1].follower_reads for n in nodes) >= served0 + 2
            st = f.status()["groups"]["1"]  # (the admin status: what /v1/status shows)
            assert st["follower_reads"] == f.replicas[1].follower_reads >= 1, st
            # Bad options are refused, by any node.
            for bad in ("/v1/kv/k?read=stale", "/v1/scan?start=&read=1"):
                for addr in addrs.values():
                    async with http.get(f"http://{addr}{bad}") as r:
                        assert r.status == 400
                        doc = await r.json()
                        assert doc["error"] == "bad_request" and "read must be" in doc["message"]
            # Without the option a follower still redirects to the leader.
            lead, f = await _follower_of(nodes)
            async with http.get(f"http://{addrs[f.cfg.node_id]}/v1/kv/k",
                                allow_redirects=False) as r:
                assert r.status == 307 or f.replicas[1].soft.role == Role.LEADER
        # Through the client stream: the reads go to followers and are served there.
        async with AsyncClient(",".join(addrs.values()), read_from="follower") as fc:
            assert fc.stream
            before = sum(n.replicas[1].follower_reads for n in nodes)
            for _ in range(10):
                assert await fc.get("k") == "v4"
            served = sum(n.replicas[1].follower_reads for n in nodes) - before
            assert served >= 5, served  # (a leader change may send a few to the leader)


async def test_read_from_any_spreads_reads_and_sees_every_acknowledged_write(
        tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        async with AsyncClient(",".join(addrs.values()), read_from="any",
                               stream=False) as c:
            for i in range(30):
                await c.put("n", str(i))
                assert await c.get("n") == str(i)  # read-your-writes, from any member
            assert [k for k, _ in await c.scan("", None)] == ["n"]
        assert sum(n.replicas[1].follower_reads for n in nodes) > 0


async def test_an_isolated_follower_never_serves_a_stale_read(tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        await _put(addrs, "x", "old")
        lead, f = await _follower_of(nodes)
        await until(lambda: f.replicas[1].applied_index >= lead.replicas[1].applied_index,
                     "the follower applied the write")
        others = {n.cfg.node_id for n in nodes if n is not f}
        assert f.transport is not None
        f.transport.faults.blocked_out |= others
        f.transport.faults.blocked_in |= others
        async with AsyncClient(",".join(addrs[i] for i in others), timeout_s=30.0) as c:
            await c.put("x", "new")
        # The isolated follower still thinks node `lead` leads; it must not answer "old".
        for _ in range(3):
            with pytest.raises((errors.Unavailable, errors.NotLeader)):
                await f.get("x", timeout_s=0.5, follower=True)
        f.transport.faults.clear()
        # Healed: it serves again, and the new value.
        async def fresh() -> bool:
            try:
                return await f.get("x", timeout_s=2.0, follower=True) == "new"
            except (errors.Unavailable, errors.NotLeader):
                return False
        for _ in range(20):  # (each try waits on its own read barrier)
            await until(lambda: f.replicas[1].soft.leader != NONE,
                        "the healed follower hears from a leader")
            if await fresh():
                break
        else:
            raise AssertionError("the healed follower never served the read")


def test_read_from_is_checked() -> None:
    with pytest.raises(errors.InvalidArgument):
        AsyncClient("127.0.0.1:1", read_from="nearest")


async def test_concurrent_follower_reads_share_one_read_index(tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        await _put(addrs, "k", "v")
        for _ in range(20):  # (a leader change in between fails some reads: again)
            _, f = await _follower_of(nodes)
            r = f.replicas[1]
            ctx0, served0 = r._read_ctx, r.follower_reads
            got = await asyncio.gather(*(f.get("k", timeout_s=10.0, follower=True)
                                         for _ in range(50)), return_exceptions=True)
            if all(g == "v" for g in got):
                break
        else:
            raise AssertionError(f"the follower did not serve 50 reads at once: {got}")
        assert r.follower_reads == served0 + 50
        # The first read asks at once; the 49 that arrive while it is out share the
        # next read index: two requests to the leader, not fifty.
        asked = r._read_ctx - ctx0
        assert asked <= 3, f"{asked} read indexes asked for 50 concurrent reads"


# --- follower reads under a leader lease ----------------------------------------------


async def test_a_leader_with_a_lease_answers_follower_reads_without_a_round(
        tmp_path: Path) -> None:
    async with nodes_running(tmp_path, lease_reads=True) as (nodes, addrs):
        await _put(addrs, "k", "v1")
        for _ in range(20):  # (a leader change in between: again)
            lead, f = await _follower_of(nodes)
            core, lease = lead.replicas[1].core, lead.replicas[1].lease
            assert core is not None and lease is not None
            assert await lead.get("k", timeout_s=10.0) == "v1"  # a round: the lease
            rounds0, leased0 = core.read_seq, lease.reads
            t0 = time.monotonic()
            got: list[str | None] = []
            try:
                for _ in range(100):
                    got.append(await f.get("k", timeout_s=10.0, follower=True))
            except (errors.Unavailable, errors.NotLeader):
                continue
            elapsed = time.monotonic() - t0
            if lead.replicas[1].soft.role == Role.LEADER and all(g == "v1" for g in got):
                break
        else:
            raise AssertionError("no stable leader for 100 follower reads")
        rounds = core.read_seq - rounds0
        leased = lease.reads - leased0
        # Only renewals take a round (one in flight at a time, past half the lease).
        assert rounds <= 100 - leased + 2 + elapsed / (lease.duration_s / 2), (
            rounds, leased, elapsed)
        # (Each renewal round lets a few reads by; a loaded machine slows the rounds.)
        assert leased > 25, f"only {leased} of 100 follower reads answered under the lease"


async def test_a_leader_cut_off_with_a_follower_stops_answering_it_before_a_new_leader_writes(
        tmp_path: Path) -> None:
    """Five nodes: the leader and one follower on one side, three on the other. The
    three elect a leader and overwrite the key; the follower keeps reading through the
    old leader, which must stop answering it first: its lease ends, and it steps down
    (check-quorum). A leader that answered read indexes without checking that it still
    leads fails this test."""
    async with nodes_running(tmp_path, 5, lease_reads=True) as (nodes, addrs):
        await _put(addrs, "x", "old")
        old, f = await _follower_of(nodes)
        assert await old.get("x", timeout_s=10.0) == "old"  # the lease is fresh
        assert await f.get("x", timeout_s=10.0, follower=True) == "old"
        minority = {old.cfg.node_id, f.cfg.node_id}
        others = [n for n in nodes if n.cfg.node_id not in minority]
        for n in nodes:
            assert n.transport is not None
            cut = ({n.cfg.node_id for n in others} if n.cfg.node_id in minority
                   else minority)
            n.transport.faults.blocked_out |= cut
            n.transport.faults.blocked_in |= cut
        reads: list[tuple[float, str | None]] = []
        stop = asyncio.Event()

        async def read_f() -> None:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    value = await f.get("x", timeout_s=0.2, follower=True)
                except (errors.Unavailable, errors.NotLeader):
                    value = None
                reads.append((start, value))
                # Pacing, not a wait: a refused read returns without yielding, and the
                # loop must let the nodes run between reads.
                await asyncio.sleep(0.002)

        reader = asyncio.get_running_loop().create_task(read_f())
        await until(lambda: leader_of(others) is not None, "the others elect a leader")
        async with AsyncClient(",".join(addrs[n.cfg.node_id] for n in others),
                               timeout_s=30.0) as c:
            await c.put("x", "new")
        written_at = time.monotonic()
        await until(lambda: sum(s > written_at for s, _ in reads) >= 3, "more reads")
        stop.set()
        await reader
        stale = [s - written_at for s, v in reads if s > written_at and v == "old"]
        assert not stale, f"stale follower reads through the cut-off leader: {stale}"


async def test_a_lost_read_index_does_not_hold_up_the_next_reads(tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        await _put(addrs, "k", "v")
        for _ in range(20):  # (a leader change in between fails the read: again)
            _, f = await _follower_of(nodes)
            r = f.replicas[1]
            loop = asyncio.get_running_loop()
            # A request that will never be answered, sent longer ago than the retry time.
            r._fwd_inflight, r._fwd_sent_at = 12345, loop.time() - 2 * r._fwd_retry_s
            try:
                assert await f.get("k", timeout_s=5.0, follower=True) == "v"
                break
            except (errors.Unavailable, errors.NotLeader):
                continue
        else:
            raise AssertionError("no follower read served")
        assert r._fwd_inflight != 12345


async def test_follower_reads_wait_out_a_snapshot_install(tmp_path: Path) -> None:
    async with nodes_running(tmp_path) as (nodes, addrs):
        await _put(addrs, "k", "v")
        _, f = await _follower_of(nodes)
        r = f.replicas[1]
        loop = asyncio.get_running_loop()
        installing: asyncio.Future[None] = loop.create_future()
        r._install_done = installing  # as the apply loop sets it around an install
        served0 = r.follower_reads
        get = loop.create_task(f.get("k", timeout_s=30.0, follower=True))
        scan = loop.create_task(f.scan("", None, 10, timeout_s=30.0, num=0, follower=True))
        await until(lambda: r.follower_reads >= served0 + 2 or get.done() or scan.done()
                     or r.soft.role == Role.LEADER,  # (then they wait all the same)
                     "both reads passed their barrier")
        assert not get.done() and not scan.done(), "a read ran during the install"
        r._install_done = None
        installing.set_result(None)
        assert await get == "v"
        assert [k for k, _ in (await scan)["items"]] == ["k"]
