"""Membership changes with real node processes: grow and shrink a group, replace its
leader, move it to new nodes, and a removed node that keeps running.

Clients write throughout (recorded, routed by the shard map); every acknowledged append
must be in the final value exactly once and the history must be linearizable.
Seeds: ``KVRAFT_MEMBER_SEED`` (printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from test_sharding import _append_anomalies, _final_reads, _Workload

from kvraft import Client, HistoryRecorder
from kvraft.check import Operation, check_history
from kvraft.testing.cluster import LocalCluster
from kvraft.testing.wait import wait_for


def _seed(default: int) -> int:
    seed = int(os.environ.get("KVRAFT_MEMBER_SEED", default))
    print(f"seed={seed}")
    return seed


def _voters(c: LocalCluster, group: int = 1) -> list[int]:
    return list(c.members_of(group, via=c.wait_for_leader(group=group))["committed_voters"])


def _controller_members(c: LocalCluster, group: int = 1) -> list[int]:
    with Client(c.addr_list[:3], timeout_s=10.0) as cl:
        cfg = cl.shard_map(fresh=True)
    return sorted(cfg.members(group))


def _check(ops: list[Operation], final: dict[str, str | None]) -> None:
    print(f"{len(ops)} operations, {sum(o.outcome == 'ok' for o in ops)} ok")
    assert sum(o.op == "append" and o.outcome == "ok" for o in ops) > 30
    assert _append_anomalies(ops, final) == []
    result = check_history(ops, time_budget_s=60.0)
    bad = [k.to_json() for k in result.keys if k.verdict != "ok"][:3]
    assert result.verdict == "ok", bad


class _Load:
    """A recorded workload against the cluster, with a helper to wait for progress."""

    def __init__(self, c: LocalCluster, tmp: Path, seed: int) -> None:
        self.rec = HistoryRecorder(tmp / "history.jsonl")
        self.w = _Workload(c.addr_list, self.rec, seed, prefixes="0aHm~")
        self.c = c

    def __enter__(self) -> _Load:
        self.w.thread.start()
        self.progress(20, "the clients to make progress")
        return self

    def progress(self, n: int = 15, what: str = "the clients to go on") -> None:
        done = self.w.ok
        wait_for(lambda: self.w.ok >= done + n, 60, what)

    def finish(self) -> tuple[list[Operation], dict[str, str | None]]:
        self.w.stop.set()
        self.w.thread.join(timeout=30)
        final = asyncio.run(_final_reads(self.c.addr_list, sorted(self.w.used), self.rec))
        return self.rec.close(), final

    def __exit__(self, *exc: object) -> None:
        self.w.stop.set()
        if self.w.thread.is_alive():
            self.w.thread.join(timeout=30)
        self.rec.close()


def test_grow_to_five_and_shrink_back_under_load(tmp_path: Path) -> None:
    """3 -> 5 voters (each new node a learner first, promoted once caught up), then back
    to 3 by removing a new node and the leader, with recorded clients writing."""
    seed = _seed(81)
    with LocalCluster(tmp_path / "c") as c, _Load(c, tmp_path, seed) as load:
        new = [c.new_node(), c.new_node()]
        for n in new:
            out = c.member("add", n)
            assert n in out["voters"], out
            load.progress()
        assert _voters(c) == [1, 2, 3, *new]
        wait_for(lambda: _controller_members(c) == [1, 2, 3, *new], 30,
                 "the controller to list five members")
        lead = c.wait_for_leader()
        for n in (new[0], lead):
            c.member("remove", n)
            load.progress()
        left = sorted({1, 2, 3, *new} - {new[0], lead})
        assert _voters(c) == left
        wait_for(lambda: _controller_members(c) == left, 30, "the controller to follow")
        assert c.wait_for_leader() in left
        ops, final = load.finish()
    _check(ops, final)


def test_replace_the_leader_while_serving(tmp_path: Path) -> None:
    """Add a node, remove the leader: the old leader steps down when its removal
    commits and hands over; writes keep succeeding, nothing acknowledged is lost."""
    seed = _seed(82)
    with LocalCluster(tmp_path / "c") as c, _Load(c, tmp_path, seed) as load:
        new = c.new_node()
        c.member("add", new)
        old = c.wait_for_leader()
        before = load.w.ok
        out = c.member("remove", old)
        assert old not in out["voters"], out
        lead = c.wait_for_leader(exclude={old})
        assert lead != old
        load.progress(30, "writes after the leader left")
        assert load.w.ok > before
        st = c.status(old)
        assert st is not None and st["role"] == "follower" and not st["member"], st
        ops, final = load.finish()
    _check(ops, final)


def test_move_a_group_to_three_new_nodes(tmp_path: Path) -> None:
    """add, add, add, remove, remove, remove: group 1 ends on three new nodes while its
    clients write through the routing client; the old nodes keep only the controller."""
    seed = _seed(83)
    with LocalCluster(tmp_path / "c") as c, _Load(c, tmp_path, seed) as load:
        new = [c.new_node() for _ in range(3)]
        for n in new:
            c.member("add", n)
            load.progress()
        for old in (1, 2, 3):
            c.member("remove", old)
            load.progress()
        assert _voters(c) == new
        wait_for(lambda: _controller_members(c) == new, 30, "the controller to follow")
        r = subprocess.run([sys.executable, "-m", "shardctl", "--controller",
                            ",".join(c.addr_list[:3]), "show"], text=True,
                           capture_output=True, timeout=60,
                           env=dict(os.environ, KVRAFT_SECRET=c.secret))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        head = next(i for i, ln in enumerate(lines) if ln.startswith("GROUP "))
        row = next(ln for ln in lines[head:] if ln.startswith("1 "))  # group 1's row
        assert all(f"{n}={c.addrs[n]}" in row for n in new), row
        assert not any(f"{n}={c.addrs[n]}" in row for n in (1, 2, 3)), row
        for old in (1, 2, 3):  # each got the entry that removed it: it knows
            wait_for(lambda o=old: (c.status(o) or {}).get("member") is False, 30,  # type: ignore[misc]
                     f"node {old} to see its removal")
        load.progress(30, "writes on the new nodes")
        ops, final = load.finish()
    _check(ops, final)
    leaders = {o for o in new if (c.status(o) or {}).get("role") == "leader"}
    assert leaders <= set(new)


def test_removed_node_that_keeps_running_does_not_disrupt(tmp_path: Path) -> None:
    """Node 3 is cut off, removed, and reconnected without ever hearing of its removal:
    it keeps campaigning, but no voter grants it a pre-vote, so the group's term and
    leader stay as they are while it serves writes."""
    with LocalCluster(tmp_path / "c") as c:
        lead = c.wait_for_leader()
        if lead == 3:  # drain it first (the operator's transfer-leader)
            out = c._admin_call("POST", "/v1/admin/transfer-leader",
                                {"group": 1, "to": 1, "timeout_s": 20}, None, 30.0)
            assert "now leads" in out["message"], out
        lead = c.wait_for_leader(exclude={3})
        c.isolate(3)
        c.member("remove", 3, via=lead)
        lead = c.wait_for_leader(exclude={3})
        term = c.status(lead)["term"]  # type: ignore[index]
        # The leader stops replicating to it soon after the removal commits (it would
        # otherwise tell node 3, which then knows it is out and never campaigns).
        wait_for(lambda: "3" not in c.members_of(1, via=lead).get("progress", {"3": 0}), 30,
                 "the leader to stop replicating to the removed node")
        c.heal()
        base = c.status(3)["campaigns"]  # type: ignore[index]
        wait_for(lambda: (c.status(3) or {}).get("campaigns", 0) >= base + 3, 30,
                 "the removed node to campaign a few times")
        with Client(c.addr_list[:2], timeout_s=10.0) as cl:
            for i in range(20):
                cl.put(f"k{i}", str(i))
        for i in (1, 2):
            st = c.status(i)
            assert st is not None and st["term"] == term and st["leader"] == lead, st
        st3 = c.status(3)
        assert st3 is not None and st3["role"] != "leader" and st3["term"] <= term, st3
        assert _voters(c) == [1, 2]


def _cli(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KVRAFT_SECRET=c.secret)
    return subprocess.run([sys.executable, "-m", "kvraft", *args], env=env, text=True,
                          capture_output=True, timeout=120)


def test_member_commands_and_bad_requests(tmp_path: Path) -> None:
    """`kvraft member` / `transfer-leader` / `status` against any node, the controller
    group's own membership, and 4xx (nothing changed) for every malformed request."""
    with LocalCluster(tmp_path / "c") as c:
        c.wait_for_leader()
        new = c.new_node()
        any_node = ["--addr", c.addrs[1]]
        r = _cli(c, "member", "add", "--group", "1", "--id", str(new), "--address",
                 c.addrs[new], "--no-promote", *any_node)
        assert r.returncode == 0 and "as a learner" in r.stdout, r.stdout + r.stderr
        r = _cli(c, "member", "list", "--group", "1", *any_node)
        assert r.returncode == 0 and re.search(rf"^{new}\s+learner\s", r.stdout, re.M), r.stdout
        r = _cli(c, "status", "--addr", ",".join(c.addr_list))
        assert r.returncode == 0 and f"learners {new} (" in r.stdout, r.stdout
        r = _cli(c, "member", "promote", "--group", "1", "--id", str(new), *any_node)
        assert r.returncode == 0 and "is a voter" in r.stdout, r.stdout + r.stderr
        r = _cli(c, "transfer-leader", "--group", "1", "--to", str(new), *any_node)
        assert r.returncode == 0 and "now leads" in r.stdout, r.stdout + r.stderr
        assert c.wait_for_leader() == new
        r = _cli(c, "status", "--addr", c.addrs[1])  # the members' addresses are asked too
        assert r.returncode == 0 and f"group 1: leader is node {new}" in r.stdout, r.stdout
        r = _cli(c, "member", "promote", "--group", "1", "--id", str(new), *any_node)
        assert r.returncode != 0 and "is not a learner" in r.stderr, r.stderr
        # The controller group changes members too; the cluster keeps working.
        r = _cli(c, "member", "add", "--group", "0", "--id", str(new), "--address",
                 c.addrs[new], *any_node)
        assert r.returncode == 0 and "is a voter of group 0" in r.stdout, r.stdout + r.stderr
        r = _cli(c, "member", "remove", "--group", "0", "--id", "1", *any_node)
        assert r.returncode == 0 and "removed from group 0" in r.stdout, r.stdout + r.stderr
        assert c.ctrl({"op": "split", "key": "m"})["ok"]
        # Nodes (and nodes that do not host the controller) learn its new members.
        want = sorted(c.addrs[n] for n in (2, 3, new))
        wait_for(lambda: sorted(c._request(2, "GET", "/v1/ctrl/config")[1].get(
            "controller", [])) == want, 30, "the controller's new members to be reported")
        before = c.members_of(1, via=new)

        def call(method: str, path: str, body: object, secret: bool = True) -> int:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            req = urllib.request.Request(
                f"http://{c.addrs[new]}{path}", data=None if method == "GET" else data,
                method=method, headers={"X-Kvraft-Secret": c.secret} if secret else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as e:
                assert json.loads(e.read())["message"], path
                return int(e.code)

        bad: list[tuple[str, str, object, int]] = [
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 9,
                                           "address": "127.0.0.1:1"}, 401),
            ("POST", "/v1/admin/members", b"{not json", 400),
            ("POST", "/v1/admin/members", [1, 2], 400),
            ("POST", "/v1/admin/members", {"op": "bogus", "group": 1, "id": 9}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 9}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 9,
                                           "address": "nowhere"}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 0,
                                           "address": "127.0.0.1:1"}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": "1", "id": 9,
                                           "address": "127.0.0.1:1"}, 400),
            ("POST", "/v1/admin/members", {"op": "remove", "group": 1, "id": 99}, 400),
            ("POST", "/v1/admin/members", {"op": "promote", "group": 1, "id": 2}, 400),
            ("POST", "/v1/admin/members", {"op": "remove", "group": 1, "id": 2,
                                           "timeout_s": -1}, 400),
            ("POST", "/v1/admin/members", {"op": "add-learner", "group": 1, "id": 9,
                                           "address": "127.0.0.1:1", "promote": "yes"}, 400),
            ("POST", "/v1/admin/transfer-leader", {"group": 1, "to": 99}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 9,
                                           "address": "h ost:80"}, 400),
            ("POST", "/v1/admin/members", {"op": "add", "group": 1, "id": 9,
                                           "address": "h:\u00b2"}, 400),
            ("GET", "/v1/admin/members?group=abc", None, 400),
            ("GET", "/v1/admin/members?group=%C2%B2", None, 400),
            ("GET", "/v1/admin/members?group=7", None, 404),
        ]
        for method, path, body, want in bad:
            got = call(method, path, body, secret=want != 401)
            assert got == want, (method, path, body, got)
        after = c.members_of(1, via=new)
        assert (after["voters"], after["learners"]) == (before["voters"], before["learners"])
