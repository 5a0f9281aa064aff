"""raft.db: durability format, truncation, checksums and identity checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kvraft.raft.types import ConfState, Entry, HardState, SnapshotMeta
from kvraft.storage.raftlog import CorruptLog, RaftLogStore, WrongReplica


def _store(p: Path) -> RaftLogStore:
    return RaftLogStore(p, node_id=1, group_id=1)


def test_save_load_and_truncate(tmp_path: Path) -> None:
    p = tmp_path / "raft.db"
    s = _store(p)
    s.save(HardState(2, 3), [Entry(i, 1, b"x%d" % i) for i in range(1, 6)])
    s.save(None, [Entry(4, 2, b"new4")])  # a conflicting suffix from index 4 is replaced
    s.close()
    loaded = _store(p).load()
    assert loaded.hard_state == HardState(2, 3)
    assert [(e.index, e.term) for e in loaded.entries] == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert loaded.entries[-1].data == b"new4"


def test_corrupt_entry_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "raft.db"
    s = _store(p)
    s.save(HardState(1, 1), [Entry(1, 1, b"hello")])
    s.close()
    c = sqlite3.connect(p)
    c.execute("UPDATE entries SET data = ? WHERE idx = 1", (b"hellO",))
    c.commit()
    c.close()
    with pytest.raises(CorruptLog, match="checksum mismatch in entry 1"):
        _store(p).load()


def test_gap_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "raft.db"
    s = _store(p)
    s.save(HardState(1, 1), [Entry(i, 1, b"") for i in range(1, 4)])
    s.conn.execute("DELETE FROM entries WHERE idx = 2")
    with pytest.raises(CorruptLog, match="gap"):
        s.load()


def test_other_nodes_directory_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "raft.db"
    _store(p).close()
    with pytest.raises(WrongReplica):
        RaftLogStore(p, node_id=2, group_id=1)


def test_compact_keeps_suffix_and_snapshot_meta(tmp_path: Path) -> None:
    p = tmp_path / "raft.db"
    s = _store(p)
    conf = ConfState(frozenset({1, 2, 3}))
    s.set_conf(conf)
    s.save(HardState(1, 1), [Entry(i, 1, b"") for i in range(1, 11)])
    s.compact(SnapshotMeta(8, 1, conf), (6, 1))  # keep 7..8 for lagging followers
    loaded = s.load()
    assert loaded.snapshot == SnapshotMeta(8, 1, conf)
    assert loaded.log_start == (6, 1)
    assert [e.index for e in loaded.entries] == [7, 8, 9, 10]
    s.compact(SnapshotMeta(20, 3, conf), (20, 3), discard_log=True)  # installed snapshot
    loaded = s.load()
    assert loaded.entries == [] and loaded.log_start == (20, 3)
    s.save(None, [Entry(21, 3, b"next")])
    assert [e.index for e in s.load().entries] == [21]


def test_compact_at_or_below_the_log_start_keeps_the_log(tmp_path: Path) -> None:
    """A snapshot whose catch-up margin reaches below the log start drops nothing."""
    s = _store(tmp_path / "raft.db")
    conf = ConfState(frozenset({1}))
    s.save(HardState(1, 1), [Entry(i, 1, b"") for i in range(1, 11)])
    s.compact(SnapshotMeta(5, 1, conf), (0, 0))
    assert [e.index for e in s.load().entries] == list(range(1, 11))
    s.compact(SnapshotMeta(8, 1, conf), (4, 1))
    s.compact(SnapshotMeta(9, 1, conf), (4, 1))  # the same start again: nothing to drop
    loaded = s.load()
    assert [e.index for e in loaded.entries] == list(range(5, 11))
    assert loaded.snapshot == SnapshotMeta(9, 1, conf)
    with pytest.raises(CorruptLog):
        s.compact(SnapshotMeta(9, 1, conf), (6, 2))  # the stored entry 6 has term 1


def _filled_state(path: Path) -> None:
    from kvraft.kv.commands import Command, Op
    from kvraft.storage.statedb import StateStore

    st = StateStore(path, gid=None)
    st.apply_batch([Entry(i, 1, Command(Op.PUT, f"k{i:05d}", "v" * 200).encode())
                    for i in range(1, 2001)])
    st.checkpoint()
    st.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_state_db_is_refused_at_open(tmp_path: Path, damage: str) -> None:
    from kvraft.storage.ctrlstate import ControllerStore
    from kvraft.storage.statedb import CorruptState, StateStore

    path = tmp_path / "state.db"
    _filled_state(path)
    data = bytearray(path.read_bytes())
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if damage == "truncate":  # a torn copy: the last pages are gone
        data = data[: len(data) // 2]
    elif damage == "flip":  # a page inside the table's b-tree scribbled over
        mid = (len(data) // 4096 // 2) * 4096
        data[mid: mid + 64] = b"\xff" * 64
    else:
        data = bytearray(b"not a database at all" * 100)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptState, match="state.db"):
        StateStore(path, gid=None)
    with pytest.raises(CorruptState, match="state.db"):
        ControllerStore(path)
