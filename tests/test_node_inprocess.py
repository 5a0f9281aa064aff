"""A node assembled in-process (real aiohttp server on 127.0.0.1, real SQLite files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvraft import AsyncClient, errors
from kvraft.bootstrap import bootstrap, wait_groups_at
from kvraft.raft import InvariantViolation, Role
from kvraft.raft.types import Message, MsgType
from kvraft.runtime.node import Node, NodeConfig
from kvraft.storage.raftlog import RaftLogStore
from kvraft.testing import free_port
from kvraft.testing.inprocess import single_node


async def _single_node(tmp_path: Path) -> Node:
    """One node hosting the controller and data group 1, bootstrapped (group 1 owns all)."""
    return await single_node(tmp_path / "n1")


def test_a_node_needs_its_groups(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--group is required"):
        NodeConfig(node_id=1, listen="127.0.0.1:1", peers={}, data_dir=tmp_path, secret="s")
    with pytest.raises(ValueError, match="--controller"):
        NodeConfig(node_id=1, listen="127.0.0.1:1", peers={}, data_dir=tmp_path, secret="s",
                   groups=(1,))


async def _wait_until_leader(node: Node, timeout_s: float = 30.0) -> None:
    """Wait (a condition, not a fixed delay) until the node's data replica leads."""
    replica = node.replicas[1]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while replica.soft.role != Role.LEADER:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the single node was not elected within {timeout_s}s: "
                                 f"{replica.status()}")
        await asyncio.sleep(0.02)


async def test_single_node_group_serves(tmp_path: Path) -> None:
    node = await _single_node(tmp_path)
    try:
        await _wait_until_leader(node)
        async with AsyncClient([node.cfg.listen], timeout_s=30.0) as c:
            await c.put("k", "v")
            assert await c.get("k") == "v"
    finally:
        await node.stop()


async def test_broken_invariant_stops_the_replica_loudly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    node = await _single_node(tmp_path)
    try:
        await _wait_until_leader(node)
        replica = node.replicas[1]
        async with AsyncClient([node.cfg.listen], timeout_s=30.0) as c:
            for i in range(3):
                await c.put(f"k{i}", "v")
            assert await c.get("k2") == "v"
        before = replica.status()
        assert before["applied"] >= 3 and before["role"] == "leader"

        def broken_step(m: Message) -> None:
            raise InvariantViolation("entry 2 conflicts with committed entry (commit 3)")

        monkeypatch.setattr(replica.core, "step", broken_step)
        replica.step([Message(MsgType.HEARTBEAT, to=1, frm=2, term=99)])
        failure = await asyncio.wait_for(node.wait_failed(), 30)
        assert "conflicts with committed" in str(failure)
        assert replica.status()["running"] is False
        last_index = replica.status()["last_index"]
        # The client retries a refused write until its deadline, so this timeout is the
        # test's duration; a write a failed replica wrongly accepted would still show up
        # below as an applied entry or a stored key, however slow the machine.
        async with AsyncClient([node.cfg.listen], timeout_s=5.0) as c:
            try:
                await c.put("after", "x")
            except errors.Unavailable:
                pass
            else:
                raise AssertionError("a failed replica accepted a write")
        after = replica.status()
        assert after["last_index"] == last_index, "a failed replica logged a write"
        assert after["applied"] == before["applied"], "a failed replica applied a write"
        assert replica.state.read("after") is None, "a failed replica stored a write"
    finally:
        await node.stop()


async def test_operator_and_client_routes_refuse_bad_input(tmp_path: Path) -> None:
    """Before any data group joined a key is refused (never sent to the controller), and
    malformed controller and scan requests are 4xx, never 500."""
    import aiohttp

    addr = f"127.0.0.1:{free_port()}"
    node = Node(NodeConfig(node_id=1, listen=addr, peers={1: addr}, data_dir=tmp_path / "n1",
                           secret="s", groups=(0, 1)))
    await node.start()
    try:
        await _wait_until_leader(node)
        ctrl = node.replicas[0]
        deadline = asyncio.get_running_loop().time() + 30
        while ctrl.soft.role != Role.LEADER:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        h = {"X-Kvraft-Secret": "s"}
        assert ctrl.core is not None
        before = ctrl.core.log.last_index()
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://{addr}/v1/kv/k", data=b"v") as r:
                assert r.status == 421 and (await r.json())["error"] == "wrong_group"
            assert ctrl.core.log.last_index() == before  # nothing reached the controller log
            bad = [{"op": "join", "gid": 2**64, "members": {"1": addr}},
                   {"op": "join", "gid": 1, "members": {str(2**64): addr}},
                   {"op": "join", "gid": 1, "members": {"1": "nohost"}},
                   {"op": "move", "range": 1, "to": 2**63},
                   {"op": "split", "key": "\ud800"},
                   {"op": "split", "key": 5},
                   {"op": "split", "key": "x" * 5000},
                   {"op": "nope"}, [1, 2]]
            for doc in bad:
                async with http.post(f"http://{addr}/v1/ctrl/command", json=doc,
                                     headers=h) as r:
                    assert 400 <= r.status < 500, (doc, r.status, await r.text())
            async with http.post(f"http://{addr}/v1/ctrl/command", data=b"\xff\xfe",
                                 headers=h) as r:
                assert r.status == 400
            async with http.post(f"http://{addr}/v1/ctrl/command",
                                 json={"op": "split", "key": "m"}) as r:
                assert r.status == 401  # no secret: nothing happens
            for q in ("limit=0", "limit=x", "num=-5", "start=%ED%A0%80"):
                async with http.get(f"http://{addr}/v1/scan?{q}") as r:
                    assert 400 <= r.status < 500, (q, r.status)
            async with http.get(f"http://{addr}/v1/ctrl/config?num=99") as r:
                assert r.status == 404
            async with http.get(f"http://{addr}/v1/ctrl/config?num=-1") as r:
                assert (await r.json())["config"]["num"] == 0  # the refusals changed nothing
    finally:
        await node.stop()


async def test_followers_write_small_batches_on_the_loop_and_keep_them(tmp_path: Path) -> None:
    """At one write in flight a follower writes each append to raft.db from its event loop
    (no thread hop), and every acknowledged write is in the follower's raft.db file."""
    ports = [free_port() for _ in range(3)]
    addrs = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    nodes = [Node(NodeConfig(node_id=i, listen=a, peers=addrs, data_dir=tmp_path / f"n{i}",
                             secret="s", groups=(0, 1))) for i, a in addrs.items()]
    for n in nodes:
        await n.start()
    try:
        num = await asyncio.to_thread(bootstrap, list(addrs.values()), "s", {1: addrs})
        await asyncio.to_thread(wait_groups_at, list(addrs.values()), [1], num, secret="s")
        def leader() -> Node:
            return next(n for n in nodes if n.replicas[1].soft.role == Role.LEADER)
        async with AsyncClient(",".join(addrs.values())) as c:
            await c.put("warm", "up")
            first, term = leader(), leader().replicas[1].soft.term
            before = {id(n): n.replicas[1].inline_saves for n in nodes}
            for i in range(30):
                await c.put(f"k{i}", "v")
        lead = leader()
        committed = lead.replicas[1].core.log.committed  # type: ignore[union-attr]
        followers = [n for n in nodes if n is not lead]
        if lead is first and lead.replicas[1].soft.term == term:  # (no election meanwhile)
            assert lead.replicas[1].inline_saves == before[id(lead)]
        assert all(f.replicas[1].inline_saves - before[id(f)] >= 15 for f in followers)
    finally:
        for n in nodes:
            await n.stop()
    holding = 0
    for f in followers:
        store = RaftLogStore(f.cfg.data_dir / "group-1" / "raft.db", node_id=f.cfg.node_id,
                             group_id=1)
        loaded = store.load()
        store.close()
        holding += bool(loaded.entries) and loaded.entries[-1].index >= committed
    assert holding >= 1  # a majority (the leader and one follower) held each write
