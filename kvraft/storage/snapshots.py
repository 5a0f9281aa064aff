"""Local snapshot files of one replica.

A snapshot is a consistent copy of ``state.db`` taken with SQLite's online backup API
in one read transaction (writers are not blocked: WAL), converted to a self-contained
rollback-journal database. It lives in ``<group-dir>/snapshots/`` as::

    <index:020d>-<term:020d>.sqlite   the database
    <index:020d>-<term:020d>.json     sidecar: index, term, conf, size, sha256

Both are written to temporary names, fsynced and renamed into place, the sidecar last:
a snapshot without its sidecar is incomplete and ignored. The index and term are read
from the copy itself (its ``applied_index``), so they always describe its contents.
Large files are streamed in chunks; nothing holds a whole snapshot in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvraft.raft.types import ConfState
from kvraft.storage.raftlog import conf_from_json, conf_to_json

CHUNK_BYTES = 1 << 20


class SnapshotError(Exception):
    """A snapshot file is missing, incomplete or fails its checksum."""


@dataclass(frozen=True, slots=True)
class LocalSnapshot:
    index: int
    term: int
    conf: ConfState
    path: Path
    size: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps({"format_version": 1, "index": self.index, "term": self.term,
                           "conf": json.loads(conf_to_json(self.conf)), "size": self.size,
                           "sha256": self.sha256})


def snapshot_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(size)
    return h.hexdigest(), size


def read_state_meta(db: Path) -> dict[str, str]:
    """The meta table of a state database file, opened read-only and immutable."""
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return dict(conn.execute("SELECT k, v FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise SnapshotError(f"{db}: not a kvraft state database ({e})") from e
    finally:
        conn.close()


def create_snapshot(state_db: Path, snap_dir: Path,
                    conf: ConfState | Callable[[int], ConfState]) -> LocalSnapshot:
    """Copy ``state_db`` into a new snapshot in ``snap_dir``; returns its description.

    ``conf`` is the membership, or a function giving the membership in force at the
    snapshot's index (known only once the copy is made). Safe to call while another
    connection keeps writing to ``state_db``.
    """
    snap_dir.mkdir(parents=True, exist_ok=True)
    tmp = snap_dir / f"tmp-{os.getpid()}-{id(snap_dir)}.sqlite"
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    dst = sqlite3.connect(tmp)
    try:
        src.backup(dst, pages=-1)  # one step: one read transaction, a consistent copy
        dst.execute("PRAGMA journal_mode=DELETE")  # self-contained: no -wal beside it
    finally:
        dst.close()
        src.close()
    fsync_file(tmp)
    meta = read_state_meta(tmp)
    index, term = int(meta.get("applied_index", 0)), int(meta.get("applied_term", 0))
    final = snap_dir / f"{snapshot_name(index, term)}.sqlite"
    os.replace(tmp, final)
    digest, size = sha256_file(final)
    snap = LocalSnapshot(index, term, conf(index) if callable(conf) else conf, final, size,
                         digest)
    _write_sidecar(snap)
    fsync_dir(snap_dir)
    return snap


def with_conf(snap: LocalSnapshot, conf: ConfState) -> LocalSnapshot:
    """The same snapshot recording another membership (its sidecar rewritten)."""
    out = LocalSnapshot(snap.index, snap.term, conf, snap.path, snap.size, snap.sha256)
    _write_sidecar(out)
    fsync_dir(snap.path.parent)
    return out


def _write_sidecar(snap: LocalSnapshot) -> None:
    side = snap.path.with_suffix(".json")
    tmp = side.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(snap.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, side)


def adopt_snapshot(file: Path, snap_dir: Path, *, index: int, term: int, conf: ConfState,
                   sha256: str, size: int) -> LocalSnapshot:
    """Move a received, already verified snapshot file into ``snap_dir``."""
    snap_dir.mkdir(parents=True, exist_ok=True)
    meta = read_state_meta(file)
    if (int(meta.get("applied_index", -1)), int(meta.get("applied_term", -1))) != (index, term):
        raise SnapshotError(f"{file}: contents are at index {meta.get('applied_index')} term "
                            f"{meta.get('applied_term')}, not {index}/{term}")
    final = snap_dir / f"{snapshot_name(index, term)}.sqlite"
    fsync_file(file)
    os.replace(file, final)
    snap = LocalSnapshot(index, term, conf, final, size, sha256)
    _write_sidecar(snap)
    fsync_dir(snap_dir)
    return snap


def list_snapshots(snap_dir: Path) -> list[LocalSnapshot]:
    """Complete snapshots (with sidecars), oldest first."""
    out = []
    if not snap_dir.is_dir():
        return out
    for side in sorted(snap_dir.glob("*.json")):
        db = side.with_suffix(".sqlite")
        try:
            d = json.loads(side.read_text())
            conf = conf_from_json(json.dumps(d["conf"]))
            out.append(LocalSnapshot(int(d["index"]), int(d["term"]), conf, db,
                                     int(d["size"]), str(d["sha256"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [s for s in out if s.path.exists()]


def verify(snap: LocalSnapshot) -> None:
    digest, size = sha256_file(snap.path)
    if (digest, size) != (snap.sha256, snap.size):
        raise SnapshotError(f"{snap.path}: checksum mismatch (sha256 {digest}, {size} bytes; "
                            f"expected {snap.sha256}, {snap.size} bytes)")


def prune(snap_dir: Path, keep: int, protect: tuple[int, int] | None = None) -> None:
    """Delete all but the newest ``keep`` snapshots, and leftover temporary files.

    ``protect`` (index, term) is never deleted: it is the snapshot raft.db records, the
    one a restart needs if state.db turns out to be behind the log (after a power loss).
    """
    snaps = list_snapshots(snap_dir)
    for s in snaps[:-keep] if keep > 0 else snaps:
        if (s.index, s.term) == protect:
            continue
        s.path.with_suffix(".json").unlink(missing_ok=True)
        s.path.unlink(missing_ok=True)
    for tmp in snap_dir.glob("tmp-*"):
        tmp.unlink(missing_ok=True)


def install_state(snap: LocalSnapshot, state_db: Path) -> None:
    """Replace ``state_db`` by a copy of the snapshot (the caller closed it first).

    Crash-safe in the order used: the old WAL is removed first (the old contents do not
    matter any more), then the copy is renamed over ``state_db``. A crash in between
    leaves an old ``state_db`` whose applied index is below the snapshot, which the
    replica detects on restart and repairs by installing the snapshot again.
    """
    tmp = state_db.with_name(state_db.name + ".installing")
    with open(snap.path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)
        dst.flush()
        os.fsync(dst.fileno())
    for suffix in ("-wal", "-shm"):
        Path(str(state_db) + suffix).unlink(missing_ok=True)
    os.replace(tmp, state_db)
    fsync_dir(state_db.parent)
