"""Value types shared by the Raft core, the simulator and the transport.

Everything here is plain data: no behaviour beyond small helpers, no I/O.
Node ids are positive integers; ``NONE`` (0) means "no node".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

NONE = 0
"""The node id that means "nobody" (no vote cast, no leader known)."""


class EntryKind(IntEnum):
    NORMAL = 0
    """A state-machine command; empty ``data`` is a no-op (a new leader appends one)."""
    CONF = 1
    """A membership change; ``data`` is an encoded :class:`ConfState`."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``index`` starts at 1; ``term`` is the leader's term when appended."""

    index: int
    term: int
    data: bytes = b""
    kind: int = EntryKind.NORMAL

    def size_bytes(self) -> int:
        """Approximate wire size, used for batching limits."""
        return len(self.data) + 24


class HardState(NamedTuple):
    """The state that must be durable before any message depending on it is sent."""

    term: int = 0
    vote: int = NONE


class ConfState(NamedTuple):
    """Group membership: voters count toward quorums, learners only receive the log.

    ``addresses`` is opaque to the core: the runtime's (node id, host:port) of members,
    carried in the log with the membership so that every replica learns how to reach a
    new member from the same entry that adds it.
    """

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    addresses: tuple[tuple[int, str], ...] = ()

    def all_nodes(self) -> frozenset[int]:
        return self.voters | self.learners

    def address_map(self) -> dict[int, str]:
        return dict(self.addresses)

    def encode(self) -> bytes:
        """The data of a CONF entry (the whole new membership, not a delta)."""
        return json.dumps({"v": 1, "voters": sorted(self.voters),
                           "learners": sorted(self.learners),
                           "addresses": {str(k): a for k, a in sorted(self.addresses)}},
                          separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> ConfState:
        """Inverse of :meth:`encode`; raises ValueError on anything else."""
        try:
            d = json.loads(data)
            voters = frozenset(_node_id(v) for v in d["voters"])
            learners = frozenset(_node_id(v) for v in d.get("learners", []))
            addrs = d.get("addresses", {})
            if not isinstance(addrs, dict) or not all(isinstance(a, str) for a in addrs.values()):
                raise ValueError("addresses must map node ids to strings")
            addresses = tuple(sorted((_node_id(int(k)), a) for k, a in addrs.items()))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed membership entry: {e}") from None
        if voters & learners:
            raise ValueError("a node cannot be both a voter and a learner")
        return ConfState(voters, learners, addresses)


def _node_id(v: object) -> int:
    if type(v) is not int or v <= 0:
        raise ValueError(f"bad node id {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a state-machine snapshot covering every entry up to ``index``."""

    index: int
    term: int
    conf: ConfState


class MsgType(IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APP = 5
    APP_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESP = 12


APP_QUIET = 1
"""``Message.hint`` of an ``APP`` that wants an answer only if it is rejected: the news
of a commit to a follower that has acknowledged every entry and read round sent to it.
A node of an older version ignores it and answers, as it did before."""


@dataclass(slots=True)
class Message:
    """A Raft message between two replicas of one group.

    Field use by type:

    - ``APP``: ``index``/``log_term`` identify the entry preceding ``entries``;
      ``commit`` is the leader's commit index; ``ctx`` is the leader's read sequence.
      ``hint`` = :data:`APP_QUIET` marks an append without entries whose answer could
      only repeat what the leader knows (see ``roles.send_append``): the follower
      answers it only to reject it.
    - ``APP_RESP``: ``index`` is the last index the follower now matches (success) or the
      rejected ``index`` (``reject``), with ``hint``/``log_term`` for fast backtracking;
      ``ctx`` echoes the request's.
    - ``HEARTBEAT``: ``commit`` and ``ctx``; ``HEARTBEAT_RESP`` echoes ``ctx``.
    - ``VOTE``/``PRE_VOTE``: ``index``/``log_term`` are the candidate's last entry.
    - ``SNAP``: ``snapshot`` describes the snapshot the sender's runtime streams separately.
    - ``READ_INDEX``: a follower asks its leader for a read index; ``ctx`` is the
      follower's read. ``READ_INDEX_RESP`` echoes ``ctx`` with ``index`` = the leader's
      commit index once a quorum confirmed it still leads, or at once under the
      runtime's leader lease (``RaftCore.answer_read_index``); ``reject``: it cannot.
    """

    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    commit: int = 0
    reject: bool = False
    hint: int = 0
    ctx: int = 0
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class SoftState(NamedTuple):
    """Volatile state the runtime watches to notice leadership changes."""

    leader: int
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read confirmed by a quorum: serve ``ctx`` once applied >= ``index``."""

    ctx: int
    index: int


@dataclass(slots=True)
class Ready:
    """Work the runtime must do, returned by ``RaftCore.ready()``.

    Ordering contract (the safety of the whole system rests on it):

    1. If ``snapshot`` is set, install it (durably) first.
    2. Persist ``hard_state`` (if set) and ``entries`` in one durable write. Storage
       first deletes every stored entry whose index is >= ``entries[0].index``
       (a conflicting suffix), then stores ``entries``.
    3. Only then send ``messages``: they may reveal the vote, term or entries above.
       The one exception (Raft thesis 10.2.1), split out by :func:`early_messages`: a
       leader whose Ready does not change its hard state may send its appends,
       heartbeats, snapshots and TimeoutNow before its own write is durable; the core
       counts the leader's own copy towards a commit only after ``advance``.
    4. Apply ``committed`` to the state machine in order (they are already durable
       locally after step 2).
    5. Serve ``read_states`` once the applied index reaches each one's ``index``.
    6. Call ``RaftCore.advance(ready)``.

    ``ready()`` must not be called again before ``advance()``; the core may be stepped,
    ticked and proposed to in between (new work appears in the next ``Ready``).
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    dropped_reads: list[int] = field(default_factory=list)
    """Read contexts that can no longer be served here (leadership lost)."""

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed
            or self.read_states
            or self.soft_state
            or self.dropped_reads
        )


LEADER_EARLY = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW})


def early_messages(rd: Ready, role: Role) -> tuple[list[Message], list[Message]]:
    """Split ``rd.messages`` into (sent before the write is durable, sent after it).

    The runtime and the simulator both use this, so the simulator checks the order the
    runtime really runs (see ``Ready``, step 3).
    """
    if role != Role.LEADER or rd.hard_state is not None:
        return [], list(rd.messages)
    early = [m for m in rd.messages if m.type in LEADER_EARLY]
    late = [m for m in rd.messages if m.type not in LEADER_EARLY]
    return early, late
