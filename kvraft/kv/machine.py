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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from kvraft.kv.commands import Command, CommandDecodeError, Op


class Status(IntEnum):
    OK = 0
    SESSION_EXPIRED = 1
    DUPLICATE_FORGOTTEN = 2
    """A retry of a command whose result the client already acknowledged."""
    BAD_COMMAND = 3


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    existed: bool = False
    """For DELETE: whether the key existed. For PUT/APPEND: whether it existed before."""


@dataclass(slots=True)
class Session:
    ack_below: int
    last_index: int
    results: dict[int, Result] = field(default_factory=dict)


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


class KVStateMachine:
    def __init__(self, backend: Backend, *, max_sessions: int = 100_000,
                 max_results_per_session: int = 4096) -> None:
        self.backend = backend
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the command in the entry at ``index``. Empty data is a no-op."""
        if not data:
            return Result(Status.OK)
        try:
            cmd = Command.decode(data)
        except CommandDecodeError:
            return Result(Status.BAD_COMMAND)
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
            session.results = {s: r for s, r in session.results.items() if s >= cmd.ack_below}
        session.results[cmd.seq] = result
        if len(session.results) > self.max_results_per_session:
            oldest = min(session.results)
            del session.results[oldest]
            session.ack_below = max(session.ack_below, oldest + 1)
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


class MemoryBackend:
    """A dict-backed Backend for the simulator and tests."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}

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
