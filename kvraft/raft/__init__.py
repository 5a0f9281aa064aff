"""The pure Raft core: deterministic, no I/O, no clock, no randomness of its own."""

from kvraft.raft.core import Config, InitialState, RaftCore, Rng, Status
from kvraft.raft.errors import InvariantViolation, NotLeader, ProposalDropped, RaftError
from kvraft.raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NONE",
    "Config",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "InitialState",
    "InvariantViolation",
    "Message",
    "MsgType",
    "NotLeader",
    "ProposalDropped",
    "RaftCore",
    "RaftError",
    "Ready",
    "ReadState",
    "Rng",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "Status",
]
