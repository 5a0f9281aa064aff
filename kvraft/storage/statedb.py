"""state.db: one replica's key-value data, client sessions and applied index in SQLite.

Contract: ``apply_batch`` applies committed entries in one transaction together with
the new applied index (and its term), so after any crash the database holds exactly
the effects of entries ``1..applied_index`` — the replica replays the log from
``applied_index + 1`` and never applies an entry twice. WAL mode with
``synchronous=NORMAL``: a process crash loses nothing committed; a power loss may lose
the newest transactions, which the Raft log (``synchronous=FULL``) still holds.

Writes happen on one worker thread; ``get`` may be called from another thread and
uses its own read-only connection (WAL readers never block the writer).

Ownership and data are read together: the shard state is saved in the same
transaction as the data it describes, and :meth:`StateStore.read_owned`,
:meth:`scan_owned` and the range exports read both inside one read transaction, so a
reader never pairs an old ownership view with newer data or the other way round.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from kvraft import errors
from kvraft.kv.machine import KVStateMachine, Result, Session, Status, export_session
from kvraft.kv.shardcmd import SessionRecord
from kvraft.kv.shards import Interval, ShardState
from kvraft.raft.types import Entry, EntryKind
from kvraft.storage.metadb import MetaTable
from kvraft.storage.sqlite_util import damaged, open_wal, transaction

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


def _encode_results(session: Session) -> bytes:
    out = msgpack.packb([[s, int(r.status), r.existed, session.keys.get(s, "")]
                         for s, r in session.results.items()])
    assert isinstance(out, bytes)
    return out


def _decode_session(ack: int, last: int, blob: bytes) -> Session:
    s = Session(ack, last)
    for row in msgpack.unpackb(blob):
        seq, st, ex = row[0], row[1], row[2]
        s.results[seq] = Result(Status(st), bool(ex))
        if len(row) > 3:
            s.keys[seq] = row[3]
    return s


class NotOwned(Exception):
    """The key (or interval) is not served by this group in its current state."""

    def __init__(self, num: int) -> None:
        super().__init__(f"not served here (configuration {num})")
        self.num = num


@dataclass(frozen=True, slots=True)
class KeyChunk:
    items: list[tuple[str, str]]
    last: bool
    """True if no keys follow in the interval."""


@dataclass(frozen=True, slots=True)
class SessionChunk:
    sessions: list[SessionRecord]
    next_cursor: str | None
    last: bool


class StateStore(MetaTable):
    """SQLite-backed state machine storage; implements ``kvraft.kv.Backend``."""

    def __init__(self, path: str | Path, *, gid: int | None = None,
                 max_sessions: int = 100_000) -> None:
        self.path = Path(path)
        try:
            self.conn = c = open_wal(self.path, "NORMAL")
            if (problem := damaged(c)) is not None:
                c.close()
                raise CorruptState(f"{self.path}: damaged ({problem}); restore the node "
                                   "from a snapshot or a backup")
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
            self._sessions[cid] = _decode_session(ack, last, blob)
        self._shard_ver = int(meta.get("shard_ver", 0))
        self.gid = gid
        self.machine = KVStateMachine(self, gid=gid, max_sessions=max_sessions)
        self._reader: sqlite3.Connection | None = None
        self._view: tuple[int, ShardState | None] = (-1, None)
        self._local = threading.local()
        self._export_conns: list[sqlite3.Connection] = []

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
            (client_id, session.ack_below, session.last_index, _encode_results(session)))

    def evict_sessions(self, keep: int) -> None:
        while len(self._sessions) > keep:
            cid, _ = self._sessions.popitem(last=False)
            self.conn.execute("DELETE FROM sessions WHERE client_id = ?", (cid,))

    def delete_range(self, start: str, end: str | None, limit: int) -> int:
        where, args = _range_sql(start, end)
        if limit > 0:
            return self.conn.execute(
                f"DELETE FROM kv WHERE k IN (SELECT k FROM kv WHERE {where} ORDER BY k "
                "LIMIT ?)", (*args, limit)).rowcount
        return self.conn.execute(f"DELETE FROM kv WHERE {where}", args).rowcount

    def shard_state(self) -> dict[str, object] | None:
        m = self._meta()
        return json.loads(m["shards"]) if "shards" in m else None

    def save_shard_state(self, state: dict[str, object]) -> None:
        self._shard_ver += 1
        self._write_meta({"shards": json.dumps(state, separators=(",", ":")),
                          "shard_ver": str(self._shard_ver)})

    @property
    def shards(self) -> ShardState | None:
        """The state machine's shard state (the state thread's; read it only there)."""
        return self.machine.shards

    # --- reads from other threads ---------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = self._reader
        if conn is None:
            conn = self._reader = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False)
        return conn

    def read(self, key: str) -> str | None:
        """Read a key on the reader connection (sees every committed ``apply_batch``).

        Called from one thread only (the event loop), never concurrently.
        """
        row = self._conn().execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _shard_view(self, conn: sqlite3.Connection) -> ShardState | None:
        """The committed shard state, inside the caller's read transaction."""
        row = conn.execute("SELECT v FROM meta WHERE k = 'shard_ver'").fetchone()
        ver = int(row[0]) if row else 0
        cached = self._view  # one read: other threads may replace it meanwhile
        if cached[0] == ver:
            return cached[1]
        r = conn.execute("SELECT v FROM meta WHERE k = 'shards'").fetchone()
        sh = ShardState.from_dict(json.loads(r[0])) if r is not None else (
            None if self.gid is None else ShardState(self.gid))
        self._view = (ver, sh)
        return sh

    def view(self) -> ShardState | None:
        """The committed shard state (None: not a sharded group)."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            return self._shard_view(conn)
        finally:
            conn.execute("COMMIT")

    def read_owned(self, key: str) -> str | None:
        """Read ``key`` if this group serves it; raises NotOwned otherwise."""
        conn = self._conn()
        # Fast path: one statement reads the shard state's version and the value from one
        # snapshot of the database; if that version is the cached view, decide with it.
        ver_s, value = conn.execute(
            "SELECT (SELECT v FROM meta WHERE k = 'shard_ver'), "
            "(SELECT v FROM kv WHERE k = ?)", (key,)).fetchone()
        cached = self._view
        if cached[0] == (int(ver_s) if ver_s is not None else 0):
            sh = cached[1]
            if sh is not None and sh.serving_range(key) is None:
                raise NotOwned(sh.num)
            return None if value is None else str(value)
        conn.execute("BEGIN")
        try:
            sh = self._shard_view(conn)
            if sh is not None and sh.serving_range(key) is None:
                raise NotOwned(sh.num)
            row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        finally:
            conn.execute("COMMIT")
        return None if row is None else str(row[0])

    def scan_owned(self, start: str, end: str | None, limit: int, max_bytes: int = 4 << 20
                   ) -> tuple[list[tuple[str, str]], str | None, int]:
        """Keys in [start, end) within the served range holding ``start`` (rule 9), at
        most ``limit`` of them and about ``max_bytes`` of keys and values.

        Returns (items, the end of that range, configuration number); raises NotOwned.
        Safe to call from any thread (its own connection).
        """
        conn = self._thread_conn()
        conn.execute("BEGIN")
        try:
            sh = self._shard_view(conn)
            range_end: str | None = None
            num = 0
            if sh is not None:
                r = sh.serving_range(start)
                if r is None:
                    raise NotOwned(sh.num)
                range_end, num = r.end, sh.num
                if range_end is not None and (end is None or range_end < end):
                    end = range_end
            where, args = _range_sql(start, end)
            items: list[tuple[str, str]] = []
            size = 0
            for k, v in conn.execute(f"SELECT k, v FROM kv WHERE {where} ORDER BY k LIMIT ?",
                                     (*args, limit)):
                items.append((str(k), str(v)))
                size += len(k) + len(v)
                if size >= max_bytes:
                    break
        finally:
            conn.execute("COMMIT")
        return items, range_end, num

    def range_stats(self) -> list[dict[str, Any]]:
        """Keys and bytes of every range this group serves (for the rebalance planner).

        Scans the ranges: call it from a worker thread (its own connection)."""
        conn = self._thread_conn()
        conn.execute("BEGIN")
        try:
            sh = self._shard_view(conn)
            out = []
            for r in (sh.config.ranges if sh is not None else ()):
                if r.gid != sh.gid:  # type: ignore[union-attr]
                    continue
                where, args = _range_sql(r.start, r.end)
                n, b = conn.execute(f"SELECT count(*), coalesce(sum(length(k) + length(v)), 0) "
                                    f"FROM kv WHERE {where}", args).fetchone()
                out.append({"range": r.id, "keys": int(n), "bytes": int(b)})
        finally:
            conn.execute("COMMIT")
        return out

    # --- exports to the new owner of a range (any replica that froze it) ---------------

    def _thread_conn(self) -> sqlite3.Connection:
        """A read-only connection of the calling thread (exports run on worker threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
            self._local.conn = conn
            self._export_conns.append(conn)
        return conn

    def _check_outgoing(self, conn: sqlite3.Connection, num: int, iv: Interval,
                        to_gid: int) -> None:
        sh = self._shard_view(conn)
        if sh is None or sh.num < num:
            raise NotOwned(-1 if sh is None else sh.num)
        if sh.outgoing_for(num, iv, to_gid) is None:
            raise errors.Gone(f"interval {iv} of configuration {num} is not held for "
                              f"group {to_gid}")

    def export_keys(self, num: int, iv: Interval, to_gid: int, after: str | None,
                    max_bytes: int, max_keys: int = 10_000) -> KeyChunk:
        """The next keys of a frozen outgoing interval after ``after``, bounded in bytes.

        Raises NotOwned if this replica has not frozen it yet (retry later) and
        ``errors.Gone`` if it does not hold it (never had it, or already deleted it). Safe to
        call from any thread (its own connection).
        """
        conn = self._thread_conn()
        conn.execute("BEGIN")
        try:
            self._check_outgoing(conn, num, iv, to_gid)
            where, args = _range_sql(iv[0], iv[1], after)
            cur = conn.execute(f"SELECT k, v FROM kv WHERE {where} ORDER BY k LIMIT ?",
                               (*args, max_keys + 1))
            items: list[tuple[str, str]] = []
            size = 0
            last = True
            for k, v in cur:
                if len(items) >= max_keys or (items and size + len(k) + len(v) > max_bytes):
                    last = False
                    break
                items.append((str(k), str(v)))
                size += len(k) + len(v)
        finally:
            conn.execute("COMMIT")
        return KeyChunk(items, last)

    def export_sessions(self, num: int, iv: Interval, to_gid: int, after: str | None,
                        limit: int, max_bytes: int = 1 << 20) -> SessionChunk:
        """The sessions after client id ``after`` that hold results for keys in ``iv``,
        cut to those results (at most ``limit`` sessions and about ``max_bytes``).

        A session without results in ``iv`` has nothing a retry there could need: a
        write that was applied here has its result here until the client acknowledged it.
        """
        conn = self._thread_conn()
        conn.execute("BEGIN")
        try:
            self._check_outgoing(conn, num, iv, to_gid)
            cur = conn.execute(
                "SELECT client_id, ack_below, last_index, results FROM sessions "
                "WHERE client_id > ? ORDER BY client_id", (after or "",))
            recs: list[SessionRecord] = []
            size, scanned, last, cursor = 0, 0, True, after
            for cid, ack, li, blob in cur:
                if len(recs) >= limit or (recs and size >= max_bytes) or scanned >= 50_000:
                    last = False
                    break
                scanned += 1
                cursor = str(cid)
                rec = export_session(str(cid), _decode_session(ack, li, blob), iv)
                if rec[2]:
                    recs.append(rec)
                    size += len(cid) + sum(16 + len(r[3]) for r in rec[2])
        finally:
            conn.execute("COMMIT")
        return SessionChunk(recs, cursor, last)

    def checkpoint(self) -> None:
        """Checkpoint the WAL on the writer's connection, between two applies (see
        ``RaftLogStore.checkpoint``)."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for c in self._export_conns:
            c.close()
        self._export_conns.clear()
        self.conn.close()


def _range_sql(start: str, end: str | None, after: str | None = None
               ) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause for keys in [start, end) (and > after), binary collation."""
    where, args = "k >= ?", [start]
    if after is not None:
        where, args = "k >= ? AND k > ?", [start, after]
    if end is not None:
        where += " AND k < ?"
        args.append(end)
    return where, tuple(args)
