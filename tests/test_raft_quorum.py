"""Tests for kvraft.raft.quorum: majorities, commit indexes and election outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.quorum import VoteResult, committed_index, majority, vote_result

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300)

voter_sets = st.frozensets(st.integers(min_value=1, max_value=9), min_size=1, max_size=7)


@pytest.mark.parametrize(
    ("n", "q"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority(n: int, q: int) -> None:
    assert majority(n) == q


@given(st.integers(min_value=1, max_value=1000))
@SETTINGS
def test_two_majorities_always_intersect(n: int) -> None:
    assert 2 * majority(n) > n
    assert majority(n) <= n


# --- committed_index ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voters", "match", "want"),
    [
        ({1}, {1: 7}, 7),
        ({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3),
        ({1, 2, 3}, {1: 5, 2: 5, 3: 1}, 5),
        ({1, 2, 3}, {1: 5}, 0),  # missing voters count as 0
        ({1, 2, 3}, {1: 5, 2: 4}, 4),
        ({1, 2, 3, 4}, {1: 4, 2: 3, 3: 2, 4: 1}, 2),  # needs 3 of 4
        ({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 1, 4: 1, 5: 1}, 1),
        ({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 8, 4: 1, 5: 1}, 8),
        ({1, 2, 3}, {1: 5, 2: 5, 7: 100, 8: 100}, 5),  # non-voters are ignored
        ({1, 2, 3}, {7: 100, 8: 100, 9: 100}, 0),
    ],
)
def test_committed_index_examples(voters: set[int], match: dict[int, int], want: int) -> None:
    assert committed_index(voters, match) == want


def test_committed_index_of_no_voters_is_zero() -> None:
    assert committed_index([], {1: 5}) == 0


def test_committed_index_accepts_any_iterable() -> None:
    assert committed_index(iter([1, 2, 3]), {1: 2, 2: 2, 3: 2}) == 2


@given(voter_sets, st.data())
@SETTINGS
def test_committed_index_is_the_largest_index_a_majority_holds(
    voters: frozenset[int], data: st.DataObject
) -> None:
    match = data.draw(st.dictionaries(
        st.integers(min_value=1, max_value=12), st.integers(min_value=0, max_value=20)))
    got = committed_index(voters, match)
    q = majority(len(voters))

    def holders(index: int) -> int:
        return sum(1 for v in voters if match.get(v, 0) >= index)

    assert holders(got) >= q, "the committed index must be acknowledged by a quorum"
    assert holders(got + 1) < q, "no larger index may be acknowledged by a quorum"
    assert got in {match.get(v, 0) for v in voters}


@given(voter_sets, st.data())
@SETTINGS
def test_committed_index_is_monotonic_in_acknowledgements(
    voters: frozenset[int], data: st.DataObject
) -> None:
    match = {v: data.draw(st.integers(min_value=0, max_value=20)) for v in voters}
    before = committed_index(voters, match)
    v = data.draw(st.sampled_from(sorted(voters)))
    match[v] += data.draw(st.integers(min_value=0, max_value=5))
    assert committed_index(voters, match) >= before


# --- vote_result ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voters", "votes", "want"),
    [
        ({1}, {}, VoteResult.PENDING),
        ({1}, {1: True}, VoteResult.WON),
        ({1}, {1: False}, VoteResult.LOST),
        ({1, 2, 3}, {1: True}, VoteResult.PENDING),
        ({1, 2, 3}, {1: True, 2: True}, VoteResult.WON),
        ({1, 2, 3}, {1: True, 2: False}, VoteResult.PENDING),
        ({1, 2, 3}, {1: True, 2: False, 3: False}, VoteResult.LOST),
        ({1, 2, 3, 4}, {1: True, 2: True}, VoteResult.PENDING),  # 2 of 4 is no quorum
        ({1, 2, 3, 4}, {1: True, 2: True, 3: False}, VoteResult.PENDING),
        ({1, 2, 3, 4}, {1: True, 2: False, 3: False}, VoteResult.LOST),
        ({1, 2, 3, 4}, {1: True, 2: True, 3: True}, VoteResult.WON),
        ({1, 2, 3}, {1: True, 8: True, 9: True}, VoteResult.PENDING),  # non-voters ignored
    ],
)
def test_vote_result_examples(
    voters: set[int], votes: dict[int, bool], want: VoteResult
) -> None:
    assert vote_result(voters, votes) == want


@given(voter_sets, st.data())
@SETTINGS
def test_vote_result_matches_counting(voters: frozenset[int], data: st.DataObject) -> None:
    votes = data.draw(st.dictionaries(st.integers(min_value=1, max_value=12), st.booleans()))
    q = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    got = vote_result(voters, votes)
    if granted >= q:
        assert got == VoteResult.WON
    elif granted + missing < q:
        assert got == VoteResult.LOST
    else:
        assert got == VoteResult.PENDING


@given(voter_sets, st.data())
@SETTINGS
def test_vote_result_decisions_are_final(voters: frozenset[int], data: st.DataObject) -> None:
    """Once WON or LOST, more answers from the remaining voters change nothing."""
    order = data.draw(st.permutations(sorted(voters)))
    answers = {v: data.draw(st.booleans()) for v in order}
    votes: dict[int, bool] = {}
    decided: VoteResult | None = None
    for v in order:
        votes[v] = answers[v]
        got = vote_result(voters, votes)
        if decided is not None:
            assert got == decided
        elif got != VoteResult.PENDING:
            decided = got
    assert decided is not None, "with every voter answered the election is decided"


@given(voter_sets, st.data())
@SETTINGS
def test_two_candidates_cannot_both_win(voters: frozenset[int], data: st.DataObject) -> None:
    """Each voter votes at most once per term, so two disjoint grant sets cannot both win."""
    choice = {v: data.draw(st.sampled_from(["a", "b", None])) for v in voters}
    votes_a = {v: c == "a" for v, c in choice.items() if c is not None}
    votes_b = {v: c == "b" for v, c in choice.items() if c is not None}
    assert not (vote_result(voters, votes_a) == VoteResult.WON
                and vote_result(voters, votes_b) == VoteResult.WON)
