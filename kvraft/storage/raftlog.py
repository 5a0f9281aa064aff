"""raft.db: one replica's Raft log and hard state in SQLite.

Durability contract: ``save()`` returns only once its writes are on disk (WAL with
``synchronous=FULL``), in one transaction per call, so the runtime can group-commit a
whole Ready batch with one fsync. Every entry row carries a CRC32 of its index, term,
kind and data; ``load()`` verifies them and refuses a corrupt log with
:class:`CorruptLog` instead of replaying garbage.

The store is used from one thread at a time (the replica's I/O worker).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvraft.raft.types import ConfState, Entry, HardState, SnapshotMeta
from kvraft.storage.sqlite_util import open_wal, transaction

FORMAT_VERSION = 1
_HDR = struct.Struct(">QQB")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx  INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
"""


class CorruptLog(Exception):
    """raft.db failed a checksum or consistency check; the replica must not start on it."""


class WrongReplica(Exception):
    """The data directory belongs to another node or group."""


def entry_crc(e: Entry) -> int:
    return zlib.crc32(e.data, zlib.crc32(_HDR.pack(e.index, e.term, e.kind)))


def conf_to_json(conf: ConfState) -> str:
    return json.dumps({"voters": sorted(conf.voters), "learners": sorted(conf.learners),
                       "addresses": {str(k): a for k, a in conf.addresses}})


def conf_from_json(text: str) -> ConfState:
    d = json.loads(text)
    return ConfState(frozenset(int(v) for v in d["voters"]),
                     frozenset(int(v) for v in d.get("learners", [])),
                     tuple(sorted((int(k), str(a)) for k, a in d.get("addresses", {}).items())))


@dataclass(slots=True)
class LoadedLog:
    hard_state: HardState
    snapshot: SnapshotMeta | None
    """The newest snapshot this replica holds (entries up to it may be compacted)."""
    log_start: tuple[int, int]
    """(index, term) of the entry just before ``entries[0]``: the compaction point."""
    entries: list[Entry]
    conf: ConfState | None


class RaftLogStore:
    def __init__(self, path: str | Path, *, node_id: int, group_id: int) -> None:
        self.path = Path(path)
        self.conn = c = open_wal(self.path, "FULL")
        c.executescript(_SCHEMA)
        self._check_identity(node_id, group_id)

    def _check_identity(self, node_id: int, group_id: int) -> None:
        meta = dict(self.conn.execute("SELECT k, v FROM meta").fetchall())
        if not meta:
            self._set_meta({"format_version": str(FORMAT_VERSION), "node_id": str(node_id),
                            "group_id": str(group_id)})
            return
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise CorruptLog(f"{self.path}: unsupported format version {meta.get('format_version')}")
        if meta.get("node_id") != str(node_id) or meta.get("group_id") != str(group_id):
            raise WrongReplica(
                f"{self.path} belongs to node {meta.get('node_id')} group {meta.get('group_id')}, "
                f"not node {node_id} group {group_id}")

    def _set_meta(self, kv: dict[str, str]) -> None:
        c = self.conn
        with transaction(c):
            c.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", kv.items())

    def load(self) -> LoadedLog:
        meta = dict(self.conn.execute("SELECT k, v FROM meta").fetchall())
        hs = HardState(int(meta.get("term", 0)), int(meta.get("vote", 0)))
        conf = conf_from_json(meta["conf"]) if "conf" in meta else None
        snap = None
        if "snap_index" in meta and conf is not None:
            snap = SnapshotMeta(int(meta["snap_index"]), int(meta["snap_term"]),
                                conf_from_json(meta.get("snap_conf", meta["conf"])))
        log_start = (int(meta.get("log_start_index", snap.index if snap else 0)),
                     int(meta.get("log_start_term", snap.term if snap else 0)))
        entries: list[Entry] = []
        expect = log_start[0] + 1
        for idx, term, kind, data, crc in self.conn.execute(
                "SELECT idx, term, kind, data, crc FROM entries ORDER BY idx"):
            e = Entry(idx, term, bytes(data), kind)
            if entry_crc(e) != crc:
                raise CorruptLog(f"{self.path}: checksum mismatch in entry {idx}")
            if idx != expect:
                raise CorruptLog(f"{self.path}: gap in log at index {expect} (found {idx})")
            if entries and term < entries[-1].term:
                raise CorruptLog(f"{self.path}: term decreases at index {idx}")
            entries.append(e)
            expect = idx + 1
        if snap is not None and snap.index < log_start[0]:
            raise CorruptLog(f"{self.path}: log compacted to {log_start[0]} beyond the newest "
                             f"snapshot {snap.index}")
        return LoadedLog(hs, snap, log_start, entries, conf)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Durably store the hard state and entries (replacing any suffix from entries[0])."""
        if hard_state is None and not entries:
            return
        c = self.conn
        with transaction(c):
            if hard_state is not None:
                c.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                              (("term", str(hard_state.term)), ("vote", str(hard_state.vote))))
            if entries:
                c.execute("DELETE FROM entries WHERE idx >= ?", (entries[0].index,))
                c.executemany("INSERT INTO entries (idx, term, kind, data, crc) VALUES (?,?,?,?,?)",
                              [(e.index, e.term, e.kind, e.data, entry_crc(e)) for e in entries])

    def mark_restored(self, index: int) -> None:
        """This replica was restored from a backup at ``index`` under an id that may once
        have been a member: it must not act as one until it is added again."""
        self._set_meta({"restored_at": str(index)})

    def restored_at(self) -> int | None:
        row = self.conn.execute("SELECT v FROM meta WHERE k = 'restored_at'").fetchone()
        return None if row is None else int(row[0])

    def clear_restored(self) -> None:
        c = self.conn
        with transaction(c):
            c.execute("DELETE FROM meta WHERE k = 'restored_at'")

    def set_conf(self, conf: ConfState) -> None:
        self._set_meta({"conf": conf_to_json(conf)})

    def compact(self, snap: SnapshotMeta, log_start: tuple[int, int], *,
                discard_log: bool = False) -> None:
        """Record the newest durable snapshot and drop entries up to ``log_start[0]``.

        ``log_start`` (index, term) is the compaction point, at or below the snapshot;
        entries between it and the snapshot stay so a slightly lagging follower can
        still be served from the log. ``discard_log`` drops every entry (a snapshot
        installed from the leader replaces the whole log). Raises :class:`CorruptLog`
        if the stored entry at ``log_start`` has another term.
        """
        c = self.conn
        with transaction(c):
            index, term = log_start
            if discard_log:
                c.execute("DELETE FROM entries")
            else:
                row = c.execute("SELECT term FROM entries WHERE idx = ?", (index,)).fetchone()
                if row is not None and row[0] != term:
                    raise CorruptLog(f"{self.path}: entry {index} has term {row[0]}, "
                                     f"not {term}, at compaction")
                c.execute("DELETE FROM entries WHERE idx <= ?", (index,))
            c.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (
                ("snap_index", str(snap.index)), ("snap_term", str(snap.term)),
                ("snap_conf", conf_to_json(snap.conf)), ("conf", conf_to_json(snap.conf)),
                ("log_start_index", str(index)), ("log_start_term", str(term))))

    def checkpoint(self) -> None:
        """Checkpoint the WAL on the writer's own connection and thread, between writes.

        With no write in flight the checkpoint catches up completely, so the next write
        starts the WAL over from its beginning: the file stops growing, and a commit's
        fdatasync has no change of file size to journal (about half the cost of one on
        a growing file). A checkpoint from another thread races the next commit under
        steady load, rarely catches up, and lets the WAL grow without bound.
        """
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.conn.close()
