"""Shard commands: the log entries by which a data group changes what it serves.

- ``CONFIG``: take the next configuration (one at a time, in order).
- ``CHUNK``: install one bounded chunk of a pulled range's keys. ``cursor`` is the
  last key installed before this chunk (None for the first) and ``next_cursor`` the
  last key in it: a chunk whose ``cursor`` does not match the pull's progress is a
  duplicate or out of order and is ignored, so re-sending after a leader change or a
  restart is safe (idempotent).
- ``SESSIONS``: install one chunk of the previous owner's client sessions (the same
  cursor rule, over client ids). The chunk with ``last`` set finishes the pull: the
  range is served from the entry after it.
- ``GC``: after the new owner confirmed, delete up to ``limit`` keys of a frozen
  outgoing interval; the step that deletes fewer than ``limit`` drops the record.

Encoded as msgpack ``["S", version, op, num, range_id, start, end, cursor, next_cursor,
last, items, sessions, config, limit]``; a client command never starts with ``"S"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from kvraft.kv.commands import CommandDecodeError

TAG = "S"
FORMAT_VERSION = 1

SessionRecord = tuple[str, int, tuple[tuple[int, int, bool, str], ...]]
"""(client_id, ack_below, ((seq, status, existed, key), ...))."""


class ShardOp(IntEnum):
    CONFIG = 1
    CHUNK = 2
    SESSIONS = 3
    GC = 4


@dataclass(frozen=True, slots=True)
class ShardCommand:
    op: ShardOp
    num: int
    range_id: int = 0
    start: str = ""
    end: str | None = None
    cursor: str | None = None
    next_cursor: str | None = None
    last: bool = False
    items: tuple[tuple[str, str], ...] = ()
    sessions: tuple[SessionRecord, ...] = ()
    config: dict[str, Any] | None = None
    limit: int = 0

    def encode(self) -> bytes:
        out = msgpack.packb(
            [TAG, FORMAT_VERSION, int(self.op), self.num, self.range_id, self.start, self.end,
             self.cursor, self.next_cursor, self.last, [list(kv) for kv in self.items],
             [[c, a, [list(r) for r in rs]] for c, a, rs in self.sessions], self.config,
             self.limit], use_bin_type=True)
        assert isinstance(out, bytes)
        return out

    @staticmethod
    def from_raw(raw: Any) -> ShardCommand:
        try:
            (tag, version, op, num, range_id, start, end, cursor, next_cursor, last, items,
             sessions, config, limit) = raw
            if tag != TAG or version != FORMAT_VERSION:
                raise CommandDecodeError(f"unknown shard command format {tag!r}/{version!r}")
            cmd = ShardCommand(
                ShardOp(op), int(num), int(range_id), _s(start), _opt(end), _opt(cursor),
                _opt(next_cursor), bool(last),
                tuple((_s(k), _s(v)) for k, v in items),
                tuple((_s(c), int(a), tuple((int(s), int(st), bool(ex), _s(k))
                                            for s, st, ex, k in rs))
                      for c, a, rs in sessions),
                config if isinstance(config, dict) else None, int(limit))
        except CommandDecodeError:
            raise
        except (ValueError, TypeError) as e:
            raise CommandDecodeError(f"malformed shard command: {e}") from e
        return cmd


def _s(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt(v: Any) -> str | None:
    return None if v is None else _s(v)


def is_shard_command(raw: Any) -> bool:
    return isinstance(raw, list) and bool(raw) and raw[0] == TAG
