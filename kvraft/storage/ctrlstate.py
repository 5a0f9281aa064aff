"""state.db of a controller replica: the numbered configurations, in SQLite.

The same durability contract as the data groups' ``state.db`` (see
:mod:`kvraft.storage.ports`): each batch of committed entries is applied in one
transaction with the applied index, so snapshots, InstallSnapshot, S3 backups and
restore work unchanged for the controller. Each configuration the machine makes is a
row of ``configs``; rows older than the machine's retention are deleted.

Readers on the event loop use :meth:`query`, which sees the configurations published
after the last applied batch (immutable objects; replaced as a whole).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from kvraft.ctrler.config import Configuration
from kvraft.ctrler.machine import ControllerMachine, CtrlResult
from kvraft.raft.types import Entry, EntryKind
from kvraft.storage.metadb import MetaTable
from kvraft.storage.sqlite_util import damaged, open_wal, transaction
from kvraft.storage.statedb import CorruptState

FORMAT_VERSION = "ctrl-1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (num INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, hash TEXT NOT NULL,
                                   role INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
"""


class ControllerStore(MetaTable):
    def __init__(self, path: str | Path, *, history_keep: int = 1000) -> None:
        self.path = Path(path)
        try:
            self.conn = c = open_wal(self.path, "NORMAL")
            if (problem := damaged(c)) is not None:
                c.close()
                raise CorruptState(f"{self.path}: damaged ({problem})")
            c.executescript(_SCHEMA)
            meta = self._meta()
            if "format_version" not in meta:
                self._write_meta({"format_version": FORMAT_VERSION})
            elif meta["format_version"] != FORMAT_VERSION:
                raise CorruptState(f"{self.path}: not a controller state database "
                                   f"(format {meta['format_version']})")
            configs = [Configuration.from_dict(json.loads(doc)) for _, doc in
                       c.execute("SELECT num, doc FROM configs ORDER BY num")]
            tokens = {n: (str(h), int(r)) for n, h, r in
                      c.execute("SELECT name, hash, role FROM tokens")}
            tokens_version = int(meta.get("tokens_version", "0"))
        except (sqlite3.DatabaseError, ValueError) as e:
            raise CorruptState(f"{self.path}: {e}") from e
        self.machine = ControllerMachine(history_keep=history_keep)
        if configs:
            self.machine.load(configs)
        self.machine.load_tokens(tokens_version, tokens)
        self._published: tuple[Configuration, ...] = tuple(self.machine.configurations())
        self._tokens = (tokens_version, tokens)

    def apply_batch(self, entries: Sequence[Entry]) -> list[CtrlResult]:
        if not entries:
            return []
        m = self.machine
        results: list[CtrlResult] = []
        tokens_changed = False
        with transaction(self.conn):
            for e in entries:
                if e.kind != EntryKind.NORMAL or not e.data:
                    results.append(CtrlResult(True, m.latest().num))
                    continue
                res = m.apply(e.data)
                if res.changed:
                    cfg = m.latest()
                    self.conn.execute("INSERT OR REPLACE INTO configs (num, doc) VALUES (?, ?)",
                                      (cfg.num, json.dumps(cfg.to_dict(), separators=(",", ":"))))
                tokens_changed = tokens_changed or res.tokens_changed
                results.append(res)
            oldest = m.configurations()[0].num
            self.conn.execute("DELETE FROM configs WHERE num < ?", (oldest,))
            last = entries[-1]
            meta = {"applied_index": str(last.index), "applied_term": str(last.term)}
            if tokens_changed:
                tokens = m.tokens()
                self.conn.execute("DELETE FROM tokens")
                self.conn.executemany("INSERT INTO tokens (name, hash, role) VALUES (?, ?, ?)",
                                      [(n, h, r) for n, (h, r) in sorted(tokens.items())])
                meta["tokens_version"] = str(m.tokens_version)
            self._write_meta(meta)
        self._published = tuple(m.configurations())
        if tokens_changed:
            self._tokens = (m.tokens_version, m.tokens())
        return results

    # --- readers (event loop) ------------------------------------------------------------

    def latest(self) -> Configuration:
        return self._published[-1]

    def query(self, num: int) -> Configuration | None:
        """Configuration ``num`` (latest if negative), None if not made or not retained."""
        pub = self._published
        if num < 0:
            return pub[-1]
        first = pub[0].num
        if num < first or num > pub[-1].num:
            return None
        cfg = pub[num - first]
        return cfg if cfg.num == num else None

    def tokens(self) -> tuple[int, dict[str, tuple[str, int]]]:
        """(tokens_version, {name: (sha256, role)}) after the last applied batch."""
        return self._tokens

    def checkpoint(self) -> None:
        """Checkpoint the WAL on the writer's connection, between two applies (see
        ``RaftLogStore.checkpoint``)."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.conn.close()
