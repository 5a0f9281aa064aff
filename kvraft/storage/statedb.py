"""state.db: one replica's key-value data, client sessions and applied index in SQLite.

Contract: ``apply_batch`` applies committed entries in one transaction together with
the new applied index (and its term), so after any crash the database holds exactly
the effects of entries ``1..applied_index`` — the replica replays the log from
``applied_index + 1`` and never applies an entry twice. WAL mode with
``synchronous=NORMAL``: a process crash loses nothing committed; a power loss may lose
the newest transactions, which the Raft log (``synchronous=FULL``) still holds.

Writes happen on one worker thread; ``get`` may be called from another thread and
uses its own read-only connection (WAL readers never block the writer).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import msgpack

from kvraft.kv.machine import KVStateMachine, Result, Session, Status
from kvraft.raft.types import ConfState, Entry, EntryKind
from kvraft.storage.raftlog import conf_from_json, conf_to_json
from kvraft.storage.sqlite_util import checkpoint, open_wal, transaction

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    client_id  TEXT PRIMARY KEY,
    ack_below  INTEGER NOT NULL,
    last_index INTEGER NOT NULL,
    results    BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
"""


class CorruptState(Exception):
    """state.db is unreadable or from an unsupported format."""


def _encode_results(results: dict[int, Result]) -> bytes:
    out = msgpack.packb([[s, int(r.status), r.existed] for s, r in results.items()])
    assert isinstance(out, bytes)
    return out


def _decode_results(blob: bytes) -> dict[int, Result]:
    return {s: Result(Status(st), bool(ex)) for s, st, ex in msgpack.unpackb(blob)}


class StateStore:
    """SQLite-backed state machine storage; implements ``kvraft.kv.Backend``."""

    def __init__(self, path: str | Path, *, max_sessions: int = 100_000) -> None:
        self.path = Path(path)
        self.conn = c = open_wal(self.path, "NORMAL")
        try:
            c.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CorruptState(f"{self.path}: {e}") from e
        meta = self._meta()
        if "format_version" not in meta:
            self._write_meta({"format_version": str(FORMAT_VERSION)})
        elif meta["format_version"] != str(FORMAT_VERSION):
            raise CorruptState(f"{self.path}: unsupported format {meta['format_version']}")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        for cid, ack, last, blob in c.execute(
                "SELECT client_id, ack_below, last_index, results FROM sessions "
                "ORDER BY last_index, client_id"):
            self._sessions[cid] = Session(ack, last, _decode_results(blob))
        self.machine = KVStateMachine(self, max_sessions=max_sessions)
        self._reader: sqlite3.Connection | None = None

    # --- meta --------------------------------------------------------------------

    def _meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT k, v FROM meta").fetchall())

    def _write_meta(self, kv: dict[str, str]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", kv.items())

    def applied(self) -> tuple[int, int]:
        """(applied index, its term)."""
        m = self._meta()
        return int(m.get("applied_index", 0)), int(m.get("applied_term", 0))

    def conf(self) -> ConfState | None:
        m = self._meta()
        return conf_from_json(m["conf"]) if "conf" in m else None

    def set_conf(self, conf: ConfState) -> None:
        self._write_meta({"conf": conf_to_json(conf)})

    # --- applying ------------------------------------------------------------------

    def apply_batch(self, entries: Sequence[Entry]) -> list[Result]:
        """Apply committed entries and record the applied index, atomically."""
        if not entries:
            return []
        c = self.conn
        results: list[Result] = []
        with transaction(c):
            for e in entries:
                if e.kind == EntryKind.NORMAL:
                    results.append(self.machine.apply(e.index, e.data))
                else:
                    results.append(Result(Status.OK))
            last = entries[-1]
            self._write_meta({"applied_index": str(last.index), "applied_term": str(last.term)})
        return results

    # --- Backend protocol (called inside apply_batch's transaction) ---------------

    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def delete(self, key: str) -> bool:
        return self.conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount > 0

    def session(self, client_id: str) -> Session | None:
        return self._sessions.get(client_id)

    def save_session(self, client_id: str, session: Session) -> None:
        self._sessions[client_id] = session
        self._sessions.move_to_end(client_id)
        self.conn.execute(
            "INSERT OR REPLACE INTO sessions (client_id, ack_below, last_index, results) "
            "VALUES (?, ?, ?, ?)",
            (client_id, session.ack_below, session.last_index, _encode_results(session.results)))

    def evict_sessions(self, keep: int) -> None:
        while len(self._sessions) > keep:
            cid, _ = self._sessions.popitem(last=False)
            self.conn.execute("DELETE FROM sessions WHERE client_id = ?", (cid,))

    # --- reads from other threads ---------------------------------------------------

    def read(self, key: str) -> str | None:
        """Read a key on the reader connection (sees every committed ``apply_batch``).

        Called from one thread only (the event loop), never concurrently.
        """
        conn = self._reader
        if conn is None:
            conn = self._reader = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False)
        row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def checkpoint(self) -> None:
        """Checkpoint the WAL (see :func:`kvraft.storage.sqlite_util.checkpoint`)."""
        checkpoint(self.path)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.conn.close()
