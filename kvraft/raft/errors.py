"""Errors raised by the Raft core.

``NotLeader`` is the caller's concern (retry elsewhere); ``InvariantViolation`` means
the replica's own state is broken and it must stop loudly rather than continue.
"""

from __future__ import annotations

from kvraft.raft.types import NONE


class RaftError(Exception):
    """Base class for errors from the Raft core."""


class NotLeader(RaftError):
    """This replica cannot accept the request; ``leader`` is a hint (NONE if unknown)."""

    def __init__(self, leader: int = NONE, term: int = 0) -> None:
        super().__init__(f"not leader (leader hint: {leader or 'unknown'}, term {term})")
        self.leader = leader
        self.term = term


class ProposalDropped(RaftError):
    """The leader is refusing proposals for now (e.g. during a leadership transfer)."""


class InvariantViolation(RaftError):
    """An internal invariant is broken: the replica must stop, not carry on."""
