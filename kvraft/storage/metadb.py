"""The ``meta`` table that every state.db has (data groups and the controller alike).

It holds the applied index and term (written in the same transaction as the state they
describe, which is what lets a snapshot describe itself) and the Raft membership.
"""

from __future__ import annotations

import sqlite3

from kvraft.raft.types import ConfState
from kvraft.storage.raftlog import conf_from_json, conf_to_json

META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;"


class MetaTable:
    """Mixin over ``self.conn`` (the store's writer connection)."""

    conn: sqlite3.Connection

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
