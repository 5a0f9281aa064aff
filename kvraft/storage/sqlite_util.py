"""SQLite helpers shared by raft.db and state.db."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WAL_SIZE_LIMIT_BYTES = 16 << 20


def open_wal(path: Path, synchronous: str) -> sqlite3.Connection:
    """A writer connection in WAL mode, autocommit, usable from any one thread at a time.

    Automatic checkpoints are off (they would fsync the database file inside a commit
    on the write path); each store checkpoints on its writer's thread, between two
    writes (see ``RaftLogStore.checkpoint``).
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    return conn


def damaged(conn: sqlite3.Connection) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the database (every page, every
    record's format), or None if nothing: a torn or truncated file is refused at open,
    not found half-way through a read."""
    try:
        rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as e:
        return str(e)
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    return "; ".join(problems) or None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
