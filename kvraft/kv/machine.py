"""The deterministic key-value state machine with client sessions.

``apply`` must be deterministic: the same commands in the same order produce the same
state and results on every replica. The data lives behind the :class:`Backend`
protocol (a dict for the simulator and tests, SQLite on nodes).

Sessions give exactly-once semantics to retried commands (Raft thesis, section 6.3).
Each session remembers the results of commands with ``seq >= ack_below``; a command
already seen returns its stored result instead of being applied again. The table holds
at most ``max_sessions`` sessions; the least recently used one is evicted. A command
from an unknown client with ``ack_below > 1`` may be a retry for an evicted session:
it is refused with SESSION_EXPIRED rather than risk applying it twice.

A machine with a group id is one data group of a sharded cluster: it applies a client
command only if it serves the key's range *now*, at apply time (SHARDING.md rule 2);
otherwise the result is WRONG_GROUP with its configuration number, and nothing changes
(the session is not touched, so the same write can still apply at the right group).
Shard commands (``kvraft.kv.shardcmd``) move it between configurations and install and
delete ranges; :class:`~kvraft.kv.shards.ShardState` holds the rules. Each session
result remembers its key, so the results of a moved range travel with it (rule 5).
A machine without a group id serves every key (the simulator's single group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import msgpack

from kvraft.ctrler.config import ConfigError, Configuration
from kvraft.kv.commands import Command, CommandDecodeError, Op
from kvraft.kv.shardcmd import SessionRecord, ShardCommand, ShardOp, is_shard_command
from kvraft.kv.shards import KEYS, SESSIONS, ShardError, ShardState, in_interval


class Status(IntEnum):
    OK = 0
    SESSION_EXPIRED = 1
    DUPLICATE_FORGOTTEN = 2
    """A retry of a command whose result the client already acknowledged."""
    BAD_COMMAND = 3
    WRONG_GROUP = 4
    """The key's range is not served by this group now; ``num`` is its configuration."""
    STALE = 5
    """A shard command that no longer applies (a duplicate or out of order): ignored."""


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    existed: bool = False
    """For DELETE: whether the key existed. For PUT/APPEND: whether it existed before."""
    num: int = 0
    """For WRONG_GROUP: the configuration number the group is at."""


@dataclass(slots=True)
class Session:
    ack_below: int
    last_index: int
    results: dict[int, Result] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    """The key each remembered result was for (so results can move with a range)."""

    def prune(self) -> None:
        """Forget results below ``ack_below``."""
        if any(s < self.ack_below for s in self.results):
            self.results = {s: r for s, r in self.results.items() if s >= self.ack_below}
            self.keys = {s: k for s, k in self.keys.items() if s >= self.ack_below}


class Backend(Protocol):
    """Storage of the key-value data and the session table.

    Writes made while applying one batch are made durable together with the applied
    index by the caller; the backend itself need not be transactional.
    """

    def get(self, key: str) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...
    def delete(self, key: str) -> bool: ...
    def session(self, client_id: str) -> Session | None: ...
    def save_session(self, client_id: str, session: Session) -> None: ...
    def evict_sessions(self, keep: int) -> None:
        """Drop least-recently-used sessions (lowest last_index, then client_id) beyond ``keep``."""
        ...
    def delete_range(self, start: str, end: str | None, limit: int) -> int:
        """Delete up to ``limit`` keys (0: all) in [start, end), lowest first; returns how many."""
        ...
    def shard_state(self) -> dict[str, object] | None: ...
    def save_shard_state(self, state: dict[str, object]) -> None: ...


class KVStateMachine:
    def __init__(self, backend: Backend, *, gid: int | None = None, max_sessions: int = 100_000,
                 max_results_per_session: int = 4096) -> None:
        self.backend = backend
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self.shards: ShardState | None = None
        if gid is not None:
            saved = backend.shard_state()
            self.shards = ShardState(gid) if saved is None else ShardState.from_dict(saved)

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the command in the entry at ``index``. Empty data is a no-op."""
        if not data:
            return Result(Status.OK)
        try:
            raw = msgpack.unpackb(data, raw=False)
            if is_shard_command(raw):
                return self._apply_shard(index, ShardCommand.from_raw(raw))
            cmd = Command.from_raw(raw)
        except (CommandDecodeError, ValueError, TypeError, msgpack.UnpackException):
            return Result(Status.BAD_COMMAND)
        sh = self.shards
        if sh is not None and sh.serving_range(cmd.key) is None:
            return Result(Status.WRONG_GROUP, num=sh.num)
        if not cmd.client_id:
            return self._execute(cmd)
        session = self.backend.session(cmd.client_id)
        if session is None:
            if cmd.ack_below > 1:
                return Result(Status.SESSION_EXPIRED)
            session = Session(ack_below=0, last_index=index)
        if cmd.seq < session.ack_below:
            return Result(Status.DUPLICATE_FORGOTTEN)
        prior = session.results.get(cmd.seq)
        if prior is not None:
            return prior
        result = self._execute(cmd)
        if cmd.ack_below > session.ack_below:
            session.ack_below = cmd.ack_below
            session.prune()
        session.results[cmd.seq] = result
        session.keys[cmd.seq] = cmd.key
        if len(session.results) > self.max_results_per_session:
            oldest = min(session.results)
            session.ack_below = max(session.ack_below, oldest + 1)
            session.prune()
        session.last_index = index
        self.backend.save_session(cmd.client_id, session)
        self.backend.evict_sessions(self.max_sessions)
        return result

    def _execute(self, cmd: Command) -> Result:
        b = self.backend
        if cmd.op == Op.PUT:
            existed = b.get(cmd.key) is not None
            b.put(cmd.key, cmd.value)
            return Result(Status.OK, existed)
        if cmd.op == Op.APPEND:
            old = b.get(cmd.key)
            b.put(cmd.key, (old or "") + cmd.value)
            return Result(Status.OK, old is not None)
        return Result(Status.OK, b.delete(cmd.key))

    # --- shard commands ------------------------------------------------------------------

    def _apply_shard(self, index: int, cmd: ShardCommand) -> Result:
        sh = self.shards
        if sh is None:
            return Result(Status.BAD_COMMAND)
        try:
            if cmd.op == ShardOp.CONFIG:
                self._take_config(sh, cmd)
            elif cmd.op == ShardOp.CHUNK:
                self._install_chunk(sh, cmd)
            elif cmd.op == ShardOp.SESSIONS:
                self._install_sessions(sh, index, cmd)
            else:
                self._gc_step(sh, cmd)
        except ShardError:
            return Result(Status.STALE, num=sh.num)
        self.backend.save_shard_state(sh.to_dict())
        return Result(Status.OK, num=sh.num)

    def _take_config(self, sh: ShardState, cmd: ShardCommand) -> None:
        if cmd.config is None:
            raise ShardError("CONFIG without a configuration")
        try:
            new = Configuration.from_dict(cmd.config)
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise ShardError(f"bad configuration: {e}") from e
        for start, end in sh.advance(new).clear:
            self.backend.delete_range(start, end, 0)

    def _install_chunk(self, sh: ShardState, cmd: ShardCommand) -> None:
        p = sh.pull(cmd.num, cmd.range_id, cmd.start)
        if p.phase != KEYS or p.cursor != cmd.cursor:
            raise ShardError("duplicate or out-of-order chunk")
        for k, _ in cmd.items:
            if not in_interval(k, p.interval) or (p.cursor is not None and k <= p.cursor):
                raise ShardError(f"chunk key {k!r} outside the pulled interval")
        for k, v in cmd.items:
            self.backend.put(k, v)
        p.keys += len(cmd.items)
        p.chunks += 1
        if cmd.last:
            p.phase, p.cursor = SESSIONS, None
        else:
            p.cursor = cmd.next_cursor

    def _install_sessions(self, sh: ShardState, index: int, cmd: ShardCommand) -> None:
        p = sh.pull(cmd.num, cmd.range_id, cmd.start)
        if p.phase != SESSIONS or p.cursor != cmd.cursor:
            raise ShardError("duplicate or out-of-order session chunk")
        for rec in cmd.sessions:
            self._merge_session(index, rec, p.interval)
        p.chunks += 1
        if cmd.last:
            sh.finish(p)
        else:
            p.cursor = cmd.next_cursor

    def _merge_session(self, index: int, rec: SessionRecord,
                       iv: tuple[str, str | None]) -> None:
        """Rule 5: keep, per client, the higher sequence state."""
        cid, ack_below, results = rec
        s = self.backend.session(cid)
        if s is None:
            # An imported session is the least recently used one here: importing must not
            # evict the sessions of clients that write to this group.
            s = Session(ack_below=ack_below, last_index=0)
        s.ack_below = max(s.ack_below, ack_below)
        for seq, status, existed, key in results:
            if seq >= s.ack_below and seq not in s.results and in_interval(key, iv):
                s.results[seq] = Result(Status(status), existed)
                s.keys[seq] = key
        s.prune()
        self.backend.save_session(cid, s)
        self.backend.evict_sessions(self.max_sessions)

    def _gc_step(self, sh: ShardState, cmd: ShardCommand) -> None:
        og = sh.outgoing_exact(cmd.num, (cmd.start, cmd.end))
        if og is None or cmd.limit <= 0:
            raise ShardError("no such outgoing interval")
        og.gc = True
        n = self.backend.delete_range(og.start, og.end, cmd.limit)
        og.deleted += n
        if n < cmd.limit:
            sh.outgoing.remove(og)


def export_session(cid: str, s: Session, iv: tuple[str, str | None]) -> SessionRecord:
    """The part of a session that moves with interval ``iv`` (rule 5)."""
    return (cid, s.ack_below, tuple((seq, int(r.status), r.existed, s.keys.get(seq, ""))
                                    for seq, r in sorted(s.results.items())
                                    if in_interval(s.keys.get(seq, ""), iv)))


class MemoryBackend:
    """A dict-backed Backend for the simulator and tests."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}
        self.shard: dict[str, object] | None = None

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, value: str) -> None:
        self.data[key] = value

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def session(self, client_id: str) -> Session | None:
        return self.sessions.get(client_id)

    def save_session(self, client_id: str, session: Session) -> None:
        self.sessions[client_id] = session

    def evict_sessions(self, keep: int) -> None:
        excess = len(self.sessions) - keep
        if excess > 0:
            victims = sorted(self.sessions.items(), key=lambda kv: (kv[1].last_index, kv[0]))
            for cid, _ in victims[:excess]:
                del self.sessions[cid]

    def delete_range(self, start: str, end: str | None, limit: int) -> int:
        keys = sorted(k for k in self.data if start <= k and (end is None or k < end))
        if limit > 0:
            keys = keys[:limit]
        for k in keys:
            del self.data[k]
        return len(keys)

    def shard_state(self) -> dict[str, object] | None:
        return self.shard

    def save_shard_state(self, state: dict[str, object]) -> None:
        self.shard = state
