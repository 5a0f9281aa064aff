"""Snapshots, log compaction and InstallSnapshot with real node processes."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from kvraft import Client
from kvraft.kv import Command, Op
from kvraft.raft.types import ConfState, Entry, HardState, SnapshotMeta
from kvraft.runtime.snapshotter import recover_state
from kvraft.storage import snapshots as snapfiles
from kvraft.storage.raftlog import RaftLogStore
from kvraft.storage.statedb import StateStore
from kvraft.testing.cluster import LocalCluster

SNAP_ARGS = ["--snapshot-entries", "100", "--snapshot-catchup-entries", "20"]


def _raft_entries(path: Path) -> tuple[int, int | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        n, first = conn.execute("SELECT COUNT(*), MIN(idx) FROM entries").fetchone()
        return int(n), first
    finally:
        conn.close()


def _read_state(path: Path, key: str) -> str | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = LocalCluster(tmp_path / "c", nodes=3, extra_args=SNAP_ARGS)
    c.start()
    try:
        c.wait_for_leader()
        yield c
    finally:
        c.stop()


def test_compaction_under_writes_and_restart(cluster: LocalCluster) -> None:
    with Client(cluster.addr_list) as c:
        for i in range(600):
            c.put(f"k{i}", f"v{i}")
    lead = cluster.wait_for_leader()
    commit = cluster.status(lead)["commit"]  # type: ignore[index]
    cluster.wait_applied(cluster.ids, commit)
    for i in cluster.ids:
        st = cluster.status(i)
        assert st is not None and st["snapshot"]["taken"] >= 4, st
        n, first = _raft_entries(cluster.data_dir(i) / "group-1" / "raft.db")
        assert first is not None and first > 300 and n < 300, (i, n, first)
    for i in cluster.ids:
        cluster.kill(i, signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader()
    with Client(cluster.addr_list) as c:
        assert [c.get(f"k{i}") for i in (0, 299, 599)] == ["v0", "v299", "v599"]
    log = cluster.log_path(1).read_text()
    starts = [line for line in log.splitlines() if "started: term" in line]
    assert "log 1.." not in starts[-1], "the restart replayed the whole log"


def test_lagging_follower_catches_up_by_install_snapshot(cluster: LocalCluster) -> None:
    lead = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != lead)
    with Client(cluster.addr_list) as c:
        c.put("early", "1")
        cluster.kill(follower, signal.SIGKILL)
        for i in range(500):
            c.put(f"k{i}", f"v{i}")
        cluster.start_node(follower)
        lead = cluster.wait_for_leader()
        commit = cluster.status(lead)["commit"]  # type: ignore[index]
        cluster.wait_applied([follower], commit)
        c.put("late", "2")
    st = cluster.status(follower)
    assert st is not None and st["snapshot"]["installed"] >= 1, st
    cluster.wait_applied([follower], cluster.status(lead)["commit"])  # type: ignore[index]
    state = cluster.data_dir(follower) / "group-1" / "state.db"
    assert _read_state(state, "early") == "1"
    assert _read_state(state, "k499") == "v499"
    assert _read_state(state, "late") == "2"


def _cmd(i: int) -> bytes:
    return Command(Op.PUT, f"k{i}", f"v{i}").encode()


def test_restart_after_crash_between_log_and_state_install(tmp_path: Path) -> None:
    """A crash after raft.db recorded an installed snapshot, before state.db was replaced."""
    gdir = tmp_path / "group-1"
    conf = ConfState(frozenset({1, 2, 3}))
    # The "leader" side: a state at index 50 and its snapshot.
    src = StateStore(tmp_path / "leader-state.db")
    src.apply_batch([Entry(i, 2, _cmd(i)) for i in range(1, 51)])
    snap = snapfiles.create_snapshot(src.path, gdir / "snapshots", conf)
    src.close()
    assert (snap.index, snap.term) == (50, 2)
    # The follower: an old state.db at 10, then raft.db recorded the snapshot — crash.
    old = StateStore(gdir / "state.db")
    old.apply_batch([Entry(i, 1, _cmd(i)) for i in range(1, 11)])
    raft = RaftLogStore(gdir / "raft.db", node_id=2, group_id=1)
    raft.save(HardState(2, 0), [Entry(i, 1) for i in range(1, 12)])
    raft.compact(SnapshotMeta(50, 2, conf), (50, 2), discard_log=True)
    loaded = raft.load()
    assert loaded.entries == [] and loaded.log_start == (50, 2)
    state = recover_state(gdir, loaded, old, lambda p: StateStore(p, max_sessions=100))
    assert state.applied() == (50, 2)
    assert state.read("k42") == "v42"
    state.close()
    raft.close()


def test_corrupt_local_snapshot_is_refused(tmp_path: Path) -> None:
    gdir = tmp_path / "group-1"
    conf = ConfState(frozenset({1}))
    src = StateStore(tmp_path / "s.db")
    src.apply_batch([Entry(1, 1, _cmd(1))])
    snap = snapfiles.create_snapshot(src.path, gdir / "snapshots", conf)
    src.close()
    data = bytearray(snap.path.read_bytes())
    data[-10] ^= 0xFF
    snap.path.write_bytes(bytes(data))
    with pytest.raises(snapfiles.SnapshotError, match="checksum mismatch"):
        snapfiles.verify(snap)


def test_snapshots_with_a_catchup_margin_larger_than_the_log(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", nodes=3, extra_args=[
        "--snapshot-entries", "50", "--snapshot-catchup-entries", "1000"])
    c.start()
    try:
        c.wait_for_leader()
        with Client(c.addr_list) as cl:
            for i in range(200):
                cl.put(f"k{i}", f"v{i}")
        lead = c.wait_for_leader()
        c.wait_applied(c.ids, c.status(lead)["commit"])  # type: ignore[index]
        assert all(c.status(i)["snapshot"]["taken"] >= 3 for i in c.ids)  # type: ignore[index]
        for i in c.ids:
            c.kill(i, signal.SIGKILL)
        c.start()
        c.wait_for_leader()
        with Client(c.addr_list) as cl:
            assert [cl.get(f"k{i}") for i in (0, 100, 199)] == ["v0", "v100", "v199"]
    finally:
        c.stop()


def test_prune_keeps_the_snapshot_raft_db_records(tmp_path: Path) -> None:
    conf = ConfState(frozenset({1}))
    src = StateStore(tmp_path / "s.db")
    made = []
    for i in range(1, 5):
        src.apply_batch([Entry(i, 1, _cmd(i))])
        made.append(snapfiles.create_snapshot(src.path, tmp_path / "snaps", conf))
    src.close()
    snapfiles.prune(tmp_path / "snaps", keep=2, protect=(1, 1))
    assert [s.index for s in snapfiles.list_snapshots(tmp_path / "snaps")] == [1, 3, 4]
