"""Majority-quorum arithmetic, kept apart so it can be tested on its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum


class VoteResult(IntEnum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(n_voters: int) -> int:
    """The number of voters that makes a quorum (n // 2 + 1)."""
    return n_voters // 2 + 1


def committed_index(voters: Iterable[int], match: Mapping[int, int]) -> int:
    """The largest index that a quorum of ``voters`` has acknowledged.

    ``match`` maps a voter to the highest index it is known to hold; a missing
    voter counts as 0. An empty voter set commits nothing (returns 0).
    """
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    if not acked:
        return 0
    return acked[majority(len(acked)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a quorum granted, LOST once a quorum can no longer grant."""
    voter_list = list(voters)
    q = majority(len(voter_list))
    granted = sum(1 for v in voter_list if votes.get(v) is True)
    missing = sum(1 for v in voter_list if v not in votes)
    if granted >= q:
        return VoteResult.WON
    if granted + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST
