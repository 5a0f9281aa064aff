"""Sharding under faults, adapted from MIT 6.5840 shardkv, against real node processes.

Two layouts: one process set hosting the controller and data groups 1 and 2
(``LocalCluster(groups=(0, 1, 2))``), or two process sets (``a``: controller + group
1, ``b``: group 2) so that all of group 2 can be killed while group 1 lives on.
Random choices are seeded; each test prints its seed (override with
``KVRAFT_SHARD_SEED``). Waits are on conditions, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kvraft import AsyncClient, Client, HistoryRecorder, errors
from kvraft.bootstrap import latest_config
from kvraft.check import Operation, check_history
from kvraft.ctrler.config import Configuration
from kvraft.kv.shardcmd import ShardCommand, ShardOp, is_shard_command
from kvraft.testing import wait_for
from kvraft.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(240)

SPREAD_KEYS = ([str(d) for d in range(10)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
               + [chr(c) for c in range(ord("a"), ord("z") + 1)])
"""Keys over the whole printable key space ("0".."9", "A".."Z", "a".."z")."""


# --- helpers ------------------------------------------------------------------------------


def _seed(default: int) -> int:
    seed = int(os.environ.get("KVRAFT_SHARD_SEED", default))
    print(f"seed={seed}")
    return seed


_wait_for = wait_for


def _latest(c: LocalCluster) -> Configuration:
    return Configuration.from_dict(latest_config(c.controller, c.secret))


def _owner(cfg: Configuration, key: str) -> int:
    return cfg.range_for(key).gid


def _view(c: LocalCluster, gid: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """The shard view of ``gid``'s leader, waiting while none answers."""
    out: dict[str, Any] = {}

    def got() -> bool:
        v = c.shard_view(gid)
        if v is not None:
            out.update(v)
        return v is not None

    _wait_for(got, timeout_s, f"a leader of group {gid} to answer")
    return out


@contextlib.contextmanager
def _two_sets(root: Path) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """``a`` hosts the controller and group 1, ``b`` group 2; both joined and serving."""
    a = LocalCluster(root / "a", groups=(0, 1), bootstrap=False)
    b = LocalCluster(root / "b", groups=(2,), first_id=4, controller=a.controller,
                     secret=a.secret)
    try:
        a.start()
        b.start()
        num = a.join_groups(extra={2: b.members()})
        b.wait_shards(2, num)
        a.wait_shards(1, num)
        yield a, b
    finally:
        b.stop()
        a.stop()


def _kill_all(c: LocalCluster) -> None:
    for i in c.ids:
        c.kill(i, signal.SIGKILL)


def _restart_all(c: LocalCluster, gid: int) -> None:
    for i in c.ids:
        c.start_node(i)
    c.wait_for_leader(timeout_s=30, group=gid)


async def _gets(addrs: list[str], keys: list[str], timeout_s: float,
                attempt_timeout_s: float = 1.0) -> dict[str, Any]:
    """Concurrent gets: key -> value, or the exception raised."""
    async with AsyncClient(addrs, timeout_s=timeout_s,
                           attempt_timeout_s=attempt_timeout_s) as c:
        res = await asyncio.gather(*(c.get(k) for k in keys), return_exceptions=True)
    return dict(zip(keys, res, strict=True))


async def _puts(addrs: list[str], items: dict[str, str], parallel: int = 64) -> None:
    async with AsyncClient(addrs, timeout_s=20.0) as c:
        sem = asyncio.Semaphore(parallel)

        async def one(k: str, v: str) -> None:
            async with sem:
                await c.put(k, v)

        await asyncio.gather(*(one(k, v) for k, v in items.items()))


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def _db_keys(path: Path, start: str, end: str) -> dict[str, str]:
    """The kv rows of a state.db with start <= k < end (read-only, while it runs)."""
    con = _ro(path)
    try:
        rows = con.execute("SELECT k, v FROM kv WHERE k >= ? AND k < ?", (start, end))
        return dict(rows.fetchall())
    finally:
        con.close()


def _config_nums_in_log(path: Path) -> list[int]:
    """Configuration numbers of the CONFIG entries in a group's raft.db, in log order."""
    con = _ro(path)
    try:
        rows = con.execute("SELECT data FROM entries ORDER BY idx").fetchall()
    finally:
        con.close()
    nums: list[int] = []
    for (data,) in rows:
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception:  # not a msgpack entry (e.g. a membership change)
            continue
        if is_shard_command(raw):
            cmd = ShardCommand.from_raw(raw)
            if cmd.op == ShardOp.CONFIG:
                nums.append(cmd.num)
    return nums


def _append_anomalies(ops: list[Operation], final: dict[str, str | None]) -> list[str]:
    """Every acknowledged append exactly once, unknown at most once, failed never."""
    out = []
    for op in ops:
        if op.op != "append" or op.value is None or not op.value.startswith("["):
            continue
        n = (final.get(op.key) or "").count(op.value)
        if op.outcome == "ok" and n != 1:
            out.append(f"acknowledged append {op.value} to {op.key!r} appears {n} times")
        elif op.outcome == "unknown" and n > 1:
            out.append(f"append {op.value} of unknown outcome appears {n} times")
        elif op.outcome == "fail" and n != 0:
            out.append(f"failed append {op.value} appears {n} times")
    return out


# --- 1. static shards ------------------------------------------------------------------------


def test_static_shards_one_group_down(tmp_path: Path) -> None:
    """With all of group 2 dead, exactly group 1's keys are served; group 2's fail with
    Unavailable (never a wrong value); after group 2 restarts every key is back."""
    with _two_sets(tmp_path) as (a, b):
        values = {k: f"v-{k}" for k in SPREAD_KEYS}
        asyncio.run(_puts(a.addr_list, values))
        cfg = _latest(a)
        mine = [k for k in SPREAD_KEYS if _owner(cfg, k) == 1]
        theirs = [k for k in SPREAD_KEYS if _owner(cfg, k) == 2]
        assert mine and theirs and len(mine) + len(theirs) == len(SPREAD_KEYS), cfg

        _kill_all(b)
        got = asyncio.run(_gets(a.addr_list, mine, timeout_s=10.0))
        assert got == {k: values[k] for k in mine}
        lost = asyncio.run(_gets(a.addr_list, theirs, timeout_s=1.0, attempt_timeout_s=0.3))
        for k, r in lost.items():
            assert isinstance(r, errors.Unavailable), f"{k!r} of dead group 2 gave {r!r}"

        _restart_all(b, 2)
        assert asyncio.run(_gets(a.addr_list, SPREAD_KEYS, timeout_s=20.0)) == values


# --- 2. join / leave with appends in between ---------------------------------------------------


PREFIXES = "17HRVdmt~"
SPLIT_POOL = ["4", "C", "M", "X", "g", "q", "w"]


class _Workload:
    """Recorded clients on keys spread over the key space, in a background thread:
    ``a`` keys get appends of unique tokens and reads, ``k`` keys a mix of everything."""

    def __init__(self, addrs: list[str], rec: HistoryRecorder, seed: int,
                 clients: int = 4, prefixes: str | list[str] = PREFIXES) -> None:
        self.addrs = addrs
        self.prefixes = list(prefixes)
        self.rec = rec
        self.seed = seed
        self.clients = clients
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.used: set[str] = set()
        self.ok = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()),
                                       name="workload", daemon=True)

    def keys(self, kind: str, epoch_s: float) -> list[str]:
        epoch = int((time.monotonic() - self.t0) / epoch_s)
        ks = [f"{p}{kind}{epoch}" for p in self.prefixes]
        self.used.update(ks)
        return ks

    async def _loop(self, c: AsyncClient, rng: random.Random) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if rng.random() < 0.6:
                    key = rng.choice(self.keys("a", 3.0))
                    if rng.random() < 0.7:
                        await c.append(key, f"[{c.name}.{n}]")
                    else:
                        await c.get(key)
                else:
                    key = rng.choice(self.keys("k", 8.0))
                    r = rng.random()
                    if r < 0.4:
                        await c.get(key)
                    elif r < 0.7:
                        await c.put(key, f"{c.name}.{n}")
                    elif r < 0.9:
                        await c.append(key, f"+{c.name}.{n}")
                    else:
                        await c.delete(key)
                self.ok += 1
            except errors.KvraftError:
                await asyncio.sleep(0.01)

    async def _run(self) -> None:
        cs = [AsyncClient(self.addrs, timeout_s=3.0, attempt_timeout_s=0.5,
                          recorder=self.rec, name=f"c{i}") for i in range(self.clients)]
        try:
            await asyncio.gather(*(self._loop(c, random.Random(self.seed * 100 + i))
                                   for i, c in enumerate(cs)))
        finally:
            for c in cs:
                await c.close()


def _random_change(cfg: Configuration, rng: random.Random, gids: list[int],
                   move: bool) -> dict[str, Any]:
    """A random valid controller command: a move of a range to another of ``gids`` if
    ``move``, else a split or a merge of same-owner neighbours."""
    starts = {r.start for r in cfg.ranges}
    choices: list[dict[str, Any]] = []
    choices += [{"op": "split", "key": k} for k in SPLIT_POOL if k not in starts]
    for left, right in zip(cfg.ranges, cfg.ranges[1:], strict=False):
        if left.gid == right.gid:
            choices.append({"op": "merge", "key": right.start})
    moves = [{"op": "move", "key": r.start or "!", "to": g}
             for r in cfg.ranges for g in gids if g != r.gid]
    return rng.choice(moves if moves and (move or not choices) else choices)


def test_join_leave_moves_with_concurrent_appends(tmp_path: Path) -> None:
    """Ranges move back and forth (move, split, merge, group 2 leaves and joins again)
    under concurrent recorded clients: every acknowledged append is in the final value
    exactly once and the history is linearizable."""
    rng = random.Random(_seed(2))
    c = LocalCluster(tmp_path / "c", groups=(0, 1, 2))
    rec = HistoryRecorder(tmp_path / "history.jsonl")
    w = _Workload([], rec, rng.randrange(1 << 30))
    steps: list[str] = []
    try:
        c.start()
        w.addrs = c.addr_list
        w.thread.start()
        _wait_for(lambda: w.ok > 20, 30, "the clients to make progress")

        def change(op: dict[str, Any]) -> None:
            num = c.ctrl(op)["num"]
            steps.append(f"{num}: {op}")
            print(steps[-1])
            for g in (1, 2):  # group 2 walks the configurations also while out
                c.wait_shards(g, num, timeout_s=60)
            done = w.ok
            _wait_for(lambda: w.ok >= done + 15, 30, "the clients to go on")

        members = {str(k): v for k, v in c.members().items()}
        for cycle in range(3):  # moves; group 2 leaves; splits/merges; it joins again
            for step in range(6):
                change(_random_change(_latest(c), rng, [1, 2],
                                      move=step % 2 == 0 or rng.random() < 0.4))
            if cycle == 2:
                break
            change({"op": "leave", "gid": 2})
            assert not _latest(c).ranges_of(2)
            assert _view(c, 2)["ranges"] == []
            for _ in range(2):
                change(_random_change(_latest(c), rng, [1], move=False))
            change({"op": "join", "gid": 2, "members": members})
        done = w.ok
        _wait_for(lambda: w.ok > done + 20, 30, "the clients to go on after the moves")
        w.stop.set()
        w.thread.join(timeout=30)
        final = asyncio.run(_final_reads(c.addr_list, sorted(w.used), rec))
    finally:
        w.stop.set()
        if w.thread.is_alive():
            w.thread.join(timeout=30)
        ops = rec.close()
        c.stop()
    print(f"{len(ops)} operations, {sum(o.outcome == 'ok' for o in ops)} ok; "
          f"{len(steps)} changes")
    assert sum(o.op == "append" and o.outcome == "ok" for o in ops) > 50
    assert _append_anomalies(ops, final) == []
    result = check_history(ops, time_budget_s=60.0)
    bad = [k.to_json() for k in result.keys if k.verdict != "ok"][:3]
    assert result.verdict == "ok", bad


async def _final_reads(addrs: list[str], keys: list[str], rec: HistoryRecorder
                       ) -> dict[str, str | None]:
    async with AsyncClient(addrs, timeout_s=30.0, recorder=rec, name="final") as c:
        return {k: await c.get(k) for k in keys}


# --- 3. garbage collection of moved ranges -----------------------------------------------------


def test_moved_range_is_deleted_from_old_owner(tmp_path: Path) -> None:
    """After a move the old owner drops its outgoing record and deletes the keys from
    every replica's state.db; the new owner holds them. The same on the way back."""
    with LocalCluster(tmp_path / "c", groups=(0, 1, 2)) as c:
        moved = {f"m{i:04d}": f"moved-{i}-" + "x" * 50 for i in range(500)}
        stay = {f"x{i:03d}": f"stay-{i}" for i in range(50)}
        asyncio.run(_puts(c.addr_list, {**moved, **stay}))
        cfg = _latest(c)
        assert _owner(cfg, "m0000") == _owner(cfg, "x000")
        src = _owner(cfg, "m0000")
        dst = 3 - src
        for k in ("m", "n"):
            c.ctrl({"op": "split", "key": k})

        def db(i: int, gid: int) -> Path:
            return c.data_dir(i) / f"group-{gid}" / "state.db"

        for frm, to in ((src, dst), (dst, src)):
            num = c.ctrl({"op": "move", "key": "m", "to": to})["num"]
            c.wait_shards(to, num)
            _wait_for(lambda frm=frm: _view(c, frm)["outgoing"] == [], 60,
                      f"group {frm} to drop its outgoing records")
            assert _view(c, frm)["outgoing"] == []

            def cleaned(frm: int = frm, to: int = to) -> bool:
                return all(_db_keys(db(i, frm), "m", "n") == {}
                           and _db_keys(db(i, to), "m", "n") == moved for i in c.ids)

            _wait_for(cleaned, 60, f"moved keys gone from group {frm}'s state.db files and "
                                   f"present in group {to}'s")
            for i in c.ids:  # the rest of the old owner's data is untouched
                assert _db_keys(db(i, src), "x", "y") == stay
            with Client(c.addr_list) as kv:
                assert dict(kv.scan("m", "n", 1000)) == moved
                assert dict(kv.scan("x", "y", 1000)) == stay


# --- 4. a group down while configurations pass ------------------------------------------------


def test_group_down_walks_missed_configurations(tmp_path: Path) -> None:
    """Group 2 is dead while the controller makes several configurations (splits and
    merges of group 1's ranges); restarted, it takes every one of them in order and
    serves its keys again."""
    rng = random.Random(_seed(4))
    with _two_sets(tmp_path) as (a, b):
        values = {k: f"v-{k}" for k in SPREAD_KEYS}
        asyncio.run(_puts(a.addr_list, values))
        cfg = _latest(a)
        theirs = [k for k in SPREAD_KEYS if _owner(cfg, k) == 2]
        mine_ranges = cfg.ranges_of(1)
        assert theirs and mine_ranges
        before = _view(b, 2)["num"]
        assert before == cfg.num

        _kill_all(b)
        # split points inside group 1's ranges, strictly after their starts
        pool = [k for k in SPREAD_KEYS
                if any(r.contains(k) and k != r.start for r in mine_ranges)]
        points = rng.sample(pool, 3)
        ops: list[dict[str, Any]] = [{"op": "split", "key": k} for k in points]
        ops.append({"op": "merge", "key": points[1]})
        ops.append({"op": "split", "key": rng.choice([k for k in pool if k not in points])})
        ops.append({"op": "merge", "key": points[0]})
        for op in ops:
            num = a.ctrl(op)["num"]
            print(f"{num}: {op}")
            a.wait_shards(1, num)
        latest = _latest(a)
        assert latest.num >= before + 6
        assert [k for k in SPREAD_KEYS if _owner(latest, k) == 2] == theirs

        _restart_all(b, 2)
        view = b.wait_shards(2, latest.num, timeout_s=60)
        assert view["num"] == latest.num

        def replicas_at_latest() -> bool:
            sts = [b.status(i, 2) for i in b.ids]
            return all(st is not None and st["shards"]["num"] >= latest.num for st in sts)

        _wait_for(replicas_at_latest, 30, "every replica of group 2 to apply the latest")
        for i in b.ids:  # every configuration in order, none skipped
            nums = _config_nums_in_log(b.data_dir(i) / "group-2" / "raft.db")
            firsts = list(dict.fromkeys(nums))
            assert firsts == list(range(1, latest.num + 1)), (i, nums)
        assert asyncio.run(_gets(a.addr_list, SPREAD_KEYS, timeout_s=20.0)) == values
        with Client(a.addr_list) as kv:
            for k in theirs:
                kv.append(k, "+after")
                assert kv.get(k) == values[k] + "+after"


# --- 5. unaffected ranges keep serving ----------------------------------------------------------


def test_live_group_serves_while_other_group_dead(tmp_path: Path) -> None:
    """While all of group 2 is dead, group 1's keys keep taking writes and reads (also
    across a configuration change of group 1's ranges); group 2's keys fail cleanly."""
    rng = random.Random(_seed(5))
    with _two_sets(tmp_path) as (a, b):
        values = {k: f"v-{k}" for k in SPREAD_KEYS}
        asyncio.run(_puts(a.addr_list, values))
        cfg = _latest(a)
        mine = [k for k in SPREAD_KEYS if _owner(cfg, k) == 1]
        theirs = [k for k in SPREAD_KEYS if _owner(cfg, k) == 2]
        _kill_all(b)
        expected = {k: values[k] for k in mine}

        async def rounds(n: int) -> None:
            async with AsyncClient(a.addr_list, timeout_s=10.0) as kv:
                for r in range(n):
                    keys = rng.sample(mine, max(1, len(mine) // 2))
                    if r % 2:
                        await asyncio.gather(*(kv.append(k, f"+{r}") for k in keys))
                        for k in keys:
                            expected[k] += f"+{r}"
                    else:
                        await asyncio.gather(*(kv.put(k, f"p{r}-{k}") for k in keys))
                        for k in keys:
                            expected[k] = f"p{r}-{k}"
                    got = await asyncio.gather(*(kv.get(k) for k in mine))
                    assert dict(zip(mine, got, strict=True)) == expected, f"round {r}"

        asyncio.run(rounds(20))
        r1 = cfg.ranges_of(1)[0]
        point = next(k for k in mine if r1.contains(k) and k != r1.start)
        num = a.ctrl({"op": "split", "key": point})["num"]
        a.wait_shards(1, num)
        asyncio.run(rounds(20))
        lost = asyncio.run(_gets(a.addr_list, theirs, timeout_s=1.0, attempt_timeout_s=0.3))
        for k, res in lost.items():
            assert isinstance(res, errors.Unavailable), f"{k!r} of dead group 2 gave {res!r}"

        _restart_all(b, 2)
        b.wait_shards(2, num, timeout_s=60)
        want = {**{k: values[k] for k in theirs}, **expected}
        assert asyncio.run(_gets(a.addr_list, SPREAD_KEYS, timeout_s=20.0)) == want


# --- 6. restarts during migration ---------------------------------------------------------------


def _kill_mid_pull(watch: LocalCluster, gid: int, victim: LocalCluster, vgid: int,
                   num: int) -> int | None:
    """Wait until ``gid`` pulls at configuration ``num`` with some keys installed, then
    SIGKILL ``vgid``'s leader in ``victim``; returns the killed node (None: too late)."""
    deadline = time.monotonic() + 30
    lead = watch.wait_for_leader(group=gid)
    while time.monotonic() < deadline:
        st = watch.status(lead, gid)
        if st is None or st.get("role") != "leader":
            lead = watch.wait_for_leader(group=gid)
            continue
        sh = st["shards"]
        if sh["num"] >= num and not sh["pulling"]:
            return None  # finished before we saw it half done
        if sh["num"] == num and any(p["keys"] > 0 for p in sh["pulling"]):
            v = victim.leader(vgid)
            if v is None:
                continue
            victim.kill(v, signal.SIGKILL)
            print(f"killed node {v} (leader of group {vgid}) while group {gid} pulled "
                  f"{sh['pulling']}")
            return v
    pytest.fail(f"group {gid} did not start pulling at configuration {num}")


def test_leader_restarts_during_migration(tmp_path: Path) -> None:
    """A range of a few thousand keys moves to group 2 while group 2's leader (the
    destination) is SIGKILLed mid-pull, then back to group 1 while group 2's leader (now
    the source) is; both migrations complete, every key has its value, the old owner
    deletes its copy, and recorded clients appending to keys of the moving range see
    each acknowledged append exactly once in a linearizable history."""
    seed = _seed(6)
    rec = HistoryRecorder(tmp_path / "history.jsonl")
    with _two_sets(tmp_path) as (a, b):
        cfg = _latest(a)
        assert _owner(cfg, "m") == 1
        data = {f"m{i:05d}": f"{i}-" + "y" * 1000 for i in range(4000)}
        asyncio.run(_puts(a.addr_list, data))
        for k in ("m", "n"):
            a.ctrl({"op": "split", "key": k})
        w = _Workload(a.addr_list, rec, seed, clients=3, prefixes=["m", "mz"])
        w.thread.start()
        home = {1: a, 2: b}
        caught: set[str] = set()  # "destination", "source": whose leader died mid-pull
        try:
            _wait_for(lambda: w.ok > 20, 30, "the clients to make progress")
            for attempt in range(6):
                to, frm = (2, 1) if attempt % 2 == 0 else (1, 2)
                role = "destination" if to == 2 else "source"
                num = a.ctrl({"op": "move", "key": "m", "to": to})["num"]
                killed = None if role in caught else _kill_mid_pull(home[to], to, b, 2, num)
                if killed is not None:
                    caught.add(role)
                    b.start_node(killed)
                home[to].wait_shards(to, num, timeout_s=90)
                with Client(a.addr_list, timeout_s=20.0) as kv:
                    got = dict(kv.scan("m0", "m1", 10_000))
                    assert len(got) == len(data)
                    assert got == data
                    assert kv.get("m00000") == data["m00000"]
                _wait_for(lambda frm=frm: _view(home[frm], frm)["outgoing"] == [],
                          60, f"group {frm} to delete the range it handed to group {to}")
                done = w.ok
                _wait_for(lambda done=done: w.ok >= done + 15, 30, "the clients to go on")
                if len(caught) == 2:
                    break
            w.stop.set()
            w.thread.join(timeout=30)
            final = asyncio.run(_final_reads(a.addr_list, sorted(w.used), rec))
        finally:
            w.stop.set()
            if w.thread.is_alive():
                w.thread.join(timeout=30)
            ops = rec.close()
        assert caught == {"destination", "source"}, f"only caught {caught} mid-pull"
    print(f"{len(ops)} operations, {sum(o.outcome == 'ok' for o in ops)} ok")
    assert _append_anomalies(ops, final) == []
    result = check_history(ops, time_budget_s=60.0)
    bad = [k.to_json() for k in result.keys if k.verdict != "ok"][:3]
    assert result.verdict == "ok", bad


# --- 7. partial: a group serves what it received while another source never arrives -------


def test_group_serves_what_arrived_while_another_source_is_dead(tmp_path: Path) -> None:
    """Group 3 receives group 1's range, then is given group 2's range while group 2 is
    dead: it keeps serving what it has (its own range and the one from group 1) while
    the other range stays pulling, and serves that one too once group 2 is back."""
    a = LocalCluster(tmp_path / "a", groups=(0, 1, 3), bootstrap=False)
    b = LocalCluster(tmp_path / "b", groups=(2,), first_id=4, controller=a.controller,
                     secret=a.secret)
    try:
        a.start()
        b.start()
        num = a.join_groups(extra={2: b.members()})
        b.wait_shards(2, num)
        cfg = _latest(a)
        assert sorted(r.gid for r in cfg.ranges) == [1, 2, 3], cfg
        values = {k: f"v-{k}" for k in SPREAD_KEYS}
        asyncio.run(_puts(a.addr_list, values))
        by_gid = {g: [k for k in SPREAD_KEYS if _owner(cfg, k) == g] for g in (1, 2, 3)}
        assert all(by_gid.values()), by_gid
        start_of = {r.gid: r.start for r in cfg.ranges}

        _kill_all(b)
        num = a.ctrl({"op": "move", "key": start_of[1] or "!", "to": 3})["num"]
        a.wait_shards(3, num)
        num = a.ctrl({"op": "move", "key": start_of[2] or "!", "to": 3})["num"]

        def pulling_from_2() -> bool:
            v = a.shard_view(3)
            return v is not None and v["num"] == num and any(
                p["from"] == 2 for p in v["pulling"])

        _wait_for(pulling_from_2, 30, "group 3 to take the configuration and pull from 2")
        served = by_gid[1] + by_gid[3]
        assert asyncio.run(_gets(a.addr_list, served, timeout_s=10.0)) == {
            k: values[k] for k in served}
        with Client(a.addr_list, timeout_s=10.0) as kv:
            for k in served:
                kv.append(k, "+w")
        waiting = asyncio.run(_gets(a.addr_list, by_gid[2], timeout_s=1.0,
                                    attempt_timeout_s=0.3))
        for k, r in waiting.items():
            assert isinstance(r, errors.Unavailable), f"{k!r} not yet installed gave {r!r}"
        assert pulling_from_2()  # still waiting for the dead source

        _restart_all(b, 2)
        a.wait_shards(3, num, timeout_s=60)
        want = {**values, **{k: values[k] + "+w" for k in served}}
        assert asyncio.run(_gets(a.addr_list, SPREAD_KEYS, timeout_s=20.0)) == want
    finally:
        b.stop()
        a.stop()
