"""The pure range rules of a data group: ShardState and the machine's shard commands.

The migration transcript test walks one range from group 1 to group 2 command by
command, as the runtime drives it, and checks the states SHARDING.md names after each
step (serving, pulling, sending, gc).
"""

from __future__ import annotations

from typing import Any

import pytest

from kvraft.ctrler import ControllerMachine, CtrlCommand, CtrlOp
from kvraft.ctrler.config import Configuration
from kvraft.kv import Command, KVStateMachine, MemoryBackend, Op, Status
from kvraft.kv.machine import export_session
from kvraft.kv.shardcmd import ShardCommand, ShardOp
from kvraft.kv.shards import ShardError, ShardState, intersect, subtract


class Cluster:
    """A controller and data groups, each one deterministic machine (no Raft)."""

    def __init__(self, gids: tuple[int, ...] = (1, 2)) -> None:
        self.ctrl = ControllerMachine()
        self.m = {g: KVStateMachine(MemoryBackend(), gid=g) for g in gids}
        self.index = {g: 0 for g in gids}
        for g in gids:
            self.op(CtrlCommand(CtrlOp.JOIN, gid=g, members=((g, f"n{g}:1"),)))

    def op(self, cmd: CtrlCommand) -> Configuration:
        res = self.ctrl.apply(cmd.encode())
        assert res.ok, res.error
        return self.ctrl.latest()

    def apply(self, g: int, data: bytes) -> Any:
        self.index[g] += 1
        return self.m[g].apply(self.index[g], data)

    def sh(self, g: int) -> ShardState:
        s = self.m[g].shards
        assert s is not None
        return s

    def take(self, g: int, num: int) -> Any:
        cfg = self.ctrl.query(num)
        assert cfg is not None
        return self.apply(g, ShardCommand(ShardOp.CONFIG, num, config=cfg.to_dict()).encode())

    def catch_up(self, g: int) -> None:
        while self.sh(g).num < self.ctrl.latest().num and self.sh(g).can_take(
                self.ctrl.query(self.sh(g).num + 1)):  # type: ignore[arg-type]
            assert self.take(g, self.sh(g).num + 1).status == Status.OK

    def pull_all(self, g: int, chunk_keys: int = 2) -> int:
        """Install every pending pull of ``g`` in chunks, as the runtime driver does."""
        chunks = 0
        while self.sh(g).pulls:
            p = self.sh(g).pulls[0]
            src = self.m[p.src_gid]
            b = src.backend
            assert isinstance(b, MemoryBackend)
            og = src.shards.outgoing_for(self.sh(g).num, p.interval, g)  # type: ignore[union-attr]
            assert og is not None, "the source must still hold the range"
            if p.phase == 0:
                keys = sorted(k for k in b.data if p.start <= k and (p.end is None or k < p.end)
                              and (p.cursor is None or k > p.cursor))[:chunk_keys]
                last = len(keys) < chunk_keys
                cmd = ShardCommand(ShardOp.CHUNK, self.sh(g).num, p.range_id, p.start, p.end,
                                   cursor=p.cursor, next_cursor=keys[-1] if keys else p.cursor,
                                   last=last, items=tuple((k, b.data[k]) for k in keys))
            else:
                recs = tuple(export_session(c, s, p.interval) for c, s in
                             sorted(b.sessions.items()))
                cmd = ShardCommand(ShardOp.SESSIONS, self.sh(g).num, p.range_id, p.start,
                                   p.end, cursor=None, next_cursor=None, last=True,
                                   sessions=recs)
            assert self.apply(g, cmd.encode()).status == Status.OK
            chunks += 1
        return chunks

    def gc_all(self, g: int, limit: int = 2) -> None:
        while self.sh(g).outgoing:
            og = self.sh(g).outgoing[0]
            assert self.sh(og.to_gid).installed(og.num, og.interval)
            self.apply(g, ShardCommand(ShardOp.GC, og.num, start=og.start, end=og.end,
                                       limit=limit).encode())


def _put(c: Cluster, g: int, key: str, value: str, cid: str = "", seq: int = 0) -> Any:
    return c.apply(g, Command(Op.PUT, key, value, cid, seq, 1 if cid else 0).encode())


def test_intervals() -> None:
    assert intersect(("a", "m"), ("k", None)) == ("k", "m")
    assert intersect(("a", "k"), ("k", None)) is None
    assert subtract(("a", None), ("c", "f")) == [("a", "c"), ("f", None)]
    assert subtract(("a", "c"), ("c", "f")) == [("a", "c")]


def test_migration_transcript() -> None:
    c = Cluster()
    c.catch_up(1)
    c.catch_up(2)
    assert [r["state"] for r in c.sh(1).view()["ranges"]] == ["serving"]
    assert c.sh(2).view()["ranges"] == []
    for k in ("a", "b", "m", "x", "y", "z"):
        assert _put(c, 1, k, k.upper()).status == Status.OK
    # the client wrote "x" with a session; its reply will be lost and it will retry
    assert c.apply(1, Command(Op.APPEND, "x", "+1", "cl.1", 1, 1).encode()).status == Status.OK
    assert _put(c, 2, "a", "?").status == Status.WRONG_GROUP  # group 2 owns nothing yet

    # split is metadata only: nothing to pull, both halves serving on group 1
    n = c.op(CtrlCommand(CtrlOp.SPLIT, key="m")).num
    c.catch_up(1)
    assert c.sh(1).num == n and not c.sh(1).pulls and not c.sh(1).outgoing
    right = c.ctrl.latest().range_for("m")

    # move ["m", inf) to group 2: group 1 freezes it at once (sending), group 2 pulls
    n = c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=right.id)).num
    c.catch_up(1)
    assert c.sh(1).view()["outgoing"] == [{"num": n, "start": "m", "end": None, "to": 2,
                                           "state": "sending", "deleted": 0}]
    r = _put(c, 1, "y", "late")
    assert (r.status, r.num) == (Status.WRONG_GROUP, n)  # frozen: refused at apply time
    c.catch_up(2)
    assert c.sh(2).view()["ranges"][0]["state"] == "pulling"
    assert _put(c, 2, "y", "early").status == Status.WRONG_GROUP  # not installed yet
    assert not c.sh(2).installed(n, ("m", None))

    chunks = c.pull_all(2)
    assert chunks == 4  # key chunks (m,x | y,z | the empty last one) and one session chunk
    assert c.sh(2).view()["ranges"][0]["state"] == "serving"
    assert c.sh(2).installed(n, ("m", None))
    b2 = c.m[2].backend
    assert isinstance(b2, MemoryBackend)
    assert b2.data == {"m": "M", "x": "X+1", "y": "Y", "z": "Z"}
    # the retried append arrives at the new owner: answered from the moved session
    r = c.apply(2, Command(Op.APPEND, "x", "+1", "cl.1", 1, 1).encode())
    assert r.status == Status.OK and b2.data["x"] == "X+1"

    # GC on the old owner, in bounded steps, only after the new owner has it
    c.gc_all(1)
    b1 = c.m[1].backend
    assert isinstance(b1, MemoryBackend)
    assert b1.data == {"a": "A", "b": "B"} and not c.sh(1).outgoing


def test_configurations_in_order_only() -> None:
    c = Cluster()
    c.op(CtrlCommand(CtrlOp.SPLIT, key="m"))
    assert c.take(1, 2).status == Status.STALE  # skips configuration 1
    assert c.take(1, 1).status == Status.OK
    assert c.take(1, 1).status == Status.STALE  # a duplicate
    assert c.sh(1).num == 1


def test_duplicate_and_stale_chunks_are_ignored() -> None:
    c = Cluster()
    c.catch_up(1)
    c.catch_up(2)
    for k in ("p", "q", "r"):
        _put(c, 1, k, k)
    rid = c.ctrl.latest().range_for("p").id
    n = c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=rid)).num
    c.catch_up(1)
    c.catch_up(2)
    p = c.sh(2).pulls[0]
    first = ShardCommand(ShardOp.CHUNK, n, p.range_id, p.start, p.end, cursor=None,
                         next_cursor="p", items=(("p", "p"),)).encode()
    assert c.apply(2, first).status == Status.OK
    assert c.apply(2, first).status == Status.STALE  # the same chunk again (a retry)
    outside = ShardCommand(ShardOp.CHUNK, n, p.range_id, p.start, p.end, cursor="p",
                           next_cursor="q", items=(("p", "p"),)).encode()
    assert c.apply(2, outside).status == Status.STALE  # not after the cursor
    c.pull_all(2)
    b2 = c.m[2].backend
    assert isinstance(b2, MemoryBackend) and b2.data == {"p": "p", "q": "q", "r": "r"}


def test_a_range_comes_back_only_after_the_new_owner_confirmed() -> None:
    """Moved away and straight back: the old owner keeps its copy (and does not take the
    configuration that returns the range) until the other group has installed it."""
    c = Cluster()
    c.catch_up(1)
    c.catch_up(2)
    for k in ("a", "k", "z"):
        _put(c, 1, k, k)
    rid = c.ctrl.latest().ranges[0].id
    away = c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=rid)).num
    back = c.op(CtrlCommand(CtrlOp.MOVE, gid=1, range_id=rid)).num
    c.catch_up(1)
    assert c.sh(1).num == away  # holds: group 2 has not confirmed
    nxt = c.ctrl.query(back)
    assert nxt is not None and not c.sh(1).can_take(nxt)
    with pytest.raises(ShardError):
        c.sh(1).advance(nxt)
    assert c.take(1, back).status == Status.STALE  # the machine refuses it too
    b1 = c.m[1].backend
    assert isinstance(b1, MemoryBackend) and len(b1.data) == 3
    c.catch_up(2)
    c.pull_all(2)
    c.catch_up(2)  # group 2 takes "back": the range is outgoing from it now
    c.gc_all(1)  # group 1 deletes its old copy after group 2 confirmed
    c.catch_up(1)
    assert c.sh(1).num == back
    c.pull_all(1)
    c.gc_all(2)
    assert isinstance(b1, MemoryBackend) and b1.data == {"a": "a", "k": "k", "z": "z"}
    assert c.sh(1).view()["ranges"][0]["state"] == "serving"


def test_shard_state_round_trips() -> None:
    c = Cluster()
    c.catch_up(1)
    _put(c, 1, "a", "1")
    rid = c.ctrl.latest().ranges[0].id
    c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=rid))
    c.catch_up(1)
    s = c.sh(1)
    assert ShardState.from_dict(s.to_dict()) == s
    with pytest.raises(ShardError):
        ShardState.from_dict({"gid": 1})


def test_garbage_shard_commands_are_refused() -> None:
    m = KVStateMachine(MemoryBackend(), gid=1)
    for data in (b"\x93\xa1S\x01", b"\xdc\x00\x0e" + b"\xc0" * 14):
        assert m.apply(1, data).status == Status.BAD_COMMAND
    bad_cfg = ShardCommand(ShardOp.CONFIG, 1, config={"num": 1}).encode()
    assert m.apply(2, bad_cfg).status == Status.STALE


def test_moving_a_range_does_not_evict_the_new_owners_sessions() -> None:
    """Imported sessions are the least recently used: a client of the destination keeps
    its session, so its retried first write is still answered, not applied twice."""
    c = Cluster()
    for g in (1, 2):
        c.m[g].max_sessions = 3
    c.catch_up(1)
    c.catch_up(2)
    n = c.op(CtrlCommand(CtrlOp.SPLIT, key="m")).num
    c.catch_up(1)
    c.catch_up(2)
    right = c.ctrl.latest().range_for("m").id
    n = c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=right)).num
    c.catch_up(1)
    c.catch_up(2)
    c.pull_all(2)
    # group 2 serves ["m", ...) now; a client of group 2 writes (first write: ack_below 1)
    w = Command(Op.APPEND, "q", "+1", "mine.2", 1, 1).encode()
    assert c.apply(2, w).status == Status.OK
    # five clients of group 1 write to its range; that range then moves to group 2,
    # and their sessions (they hold results there) move with it
    for i in range(5):
        assert _put(c, 1, f"b{i}", "v", cid=f"other{i}.1", seq=1).status == Status.OK
    left = c.ctrl.latest().range_for("a").id
    c.op(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=left))
    c.catch_up(1)
    c.catch_up(2)
    c.pull_all(2)
    assert c.m[2].backend.session("mine.2") is not None  # not evicted by the imports
    assert c.apply(2, w).status == Status.OK  # the retry is answered from the session
    b2 = c.m[2].backend
    assert isinstance(b2, MemoryBackend) and b2.data["q"] == "+1"
    assert n > 0


def test_scan_is_bounded_by_bytes(tmp_path: Any) -> None:
    from kvraft.raft.types import Entry
    from kvraft.storage.statedb import StateStore

    s = StateStore(tmp_path / "state.db")
    s.apply_batch([Entry(i + 1, 1, Command(Op.PUT, f"k{i:03d}", "x" * 1000).encode())
                   for i in range(100)])
    items, end, _ = s.scan_owned("", None, 1000, max_bytes=10_000)
    assert 9 <= len(items) <= 11 and end is None
    assert [k for k, _ in items] == [f"k{i:03d}" for i in range(len(items))]
    s.close()
