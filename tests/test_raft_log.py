"""Tests for kvraft.raft.log.RaftLog: appends, conflicts, durability tracking, compaction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.errors import InvariantViolation
from kvraft.raft.log import RaftLog
from kvraft.raft.types import Entry

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300)


def ents(first: int, *terms: int, data: bytes = b"") -> list[Entry]:
    """Entries first, first+1, ... with the given terms."""
    return [Entry(first + k, t, data) for k, t in enumerate(terms)]


def log_of(*terms: int, snapshot: tuple[int, int] = (0, 0), applied: int = 0) -> RaftLog:
    si, st_ = snapshot
    return RaftLog(snapshot_index=si, snapshot_term=st_, entries=ents(si + 1, *terms),
                   applied=applied)


def terms_of(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# --- construction and queries -------------------------------------------------------------


def test_empty_log() -> None:
    log = RaftLog()
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.term(0) == 0
    assert log.term(1) is None
    assert (log.committed, log.applying, log.applied, log.stable, log.persisting) == (0,) * 5
    assert log.unstable_entries() == []


def test_restart_state_is_durable_and_committed_up_to_applied() -> None:
    log = log_of(1, 1, 2, applied=2)
    assert (log.last_index(), log.last_term()) == (3, 2)
    assert (log.committed, log.applying, log.applied) == (2, 2, 2)
    assert log.stable == 3, "entries a replica restarts with are already durable"
    assert log.unstable_entries() == []


def test_restart_from_snapshot() -> None:
    log = log_of(3, 4, snapshot=(10, 3))
    assert (log.first_index(), log.last_index()) == (11, 12)
    assert log.committed == log.applied == 10, "a snapshot is applied and committed"
    assert log.term(10) == 3
    assert log.term(9) is None
    assert log.term(13) is None
    assert log.last_term() == 4
    assert log_of(snapshot=(10, 3)).last_term() == 3


def test_constructor_checks_invariants() -> None:
    with pytest.raises(InvariantViolation):
        RaftLog(entries=[Entry(2, 1)])  # does not follow the snapshot at 0
    with pytest.raises(InvariantViolation):
        RaftLog(entries=ents(1, 2, 1))  # terms decrease
    with pytest.raises(InvariantViolation):
        RaftLog(entries=ents(1, 1), applied=5)  # applied beyond the last entry


@pytest.mark.parametrize(
    ("last_index", "last_term", "want"),
    [
        (3, 2, True),   # identical
        (4, 2, True),   # same term, longer
        (2, 2, False),  # same term, shorter
        (1, 3, True),   # later term wins whatever the length
        (9, 1, False),  # earlier term loses whatever the length
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, want: bool) -> None:
    assert log_of(1, 1, 2).is_up_to_date(last_index, last_term) is want


def test_match_term() -> None:
    log = log_of(1, 2, snapshot=(5, 1))
    assert log.match_term(5, 1)
    assert log.match_term(7, 2)
    assert not log.match_term(7, 1)
    assert not log.match_term(4, 1), "compacted entries never match"
    assert not log.match_term(8, 2), "entries beyond the end never match"


# --- append and maybe_append ------------------------------------------------------------


def test_append_must_follow_the_last_entry() -> None:
    log = log_of(1)
    log.append(ents(2, 1, 2))
    assert terms_of(log) == [1, 1, 2]
    log.append([])
    assert log.last_index() == 3
    with pytest.raises(InvariantViolation):
        log.append(ents(5, 2))
    with pytest.raises(InvariantViolation):
        log.append(ents(3, 2))


def test_maybe_append_rejects_on_mismatch_and_changes_nothing() -> None:
    log = log_of(1, 1, 2)
    assert log.maybe_append(3, 1, 3, ents(4, 3)) is None  # wrong term at 3
    assert log.maybe_append(5, 2, 3, ents(6, 3)) is None  # beyond the end
    assert terms_of(log) == [1, 1, 2]
    assert log.committed == 0


def test_maybe_append_appends_new_entries() -> None:
    log = log_of(1, 1)
    assert log.maybe_append(2, 1, 1, ents(3, 2, 2)) == 4
    assert terms_of(log) == [1, 1, 2, 2]
    assert log.committed == 1


def test_maybe_append_with_matching_entries_keeps_a_longer_log() -> None:
    """Entries it already has change nothing, and nothing after them is dropped: the
    reply is prev + len(entries), not the follower's last index."""
    log = log_of(1, 1, 2, 2, 2)
    assert log.maybe_append(1, 1, 0, ents(2, 1, 2)) == 3
    assert terms_of(log) == [1, 1, 2, 2, 2]
    assert log.maybe_append(5, 2, 0, []) == 5  # a heartbeat-like empty append


def test_maybe_append_truncates_a_conflicting_suffix() -> None:
    log = log_of(1, 1, 2, 2, 2)
    log.stable = log.persisting = 5
    assert log.maybe_append(2, 1, 0, ents(3, 2, 3)) == 4
    assert terms_of(log) == [1, 1, 2, 3]
    assert log.stable == 3 and log.persisting == 3, "index 4 must be written again"
    assert log.unstable_entries() == ents(4, 3)


def test_maybe_append_commits_at_most_the_last_new_entry() -> None:
    """The leader's commit index may exceed what this message proves we hold."""
    log = log_of(1, 1, 1, 1, 1)
    assert log.maybe_append(1, 1, 10, ents(2, 1)) == 2
    assert log.committed == 2
    assert log.maybe_append(3, 1, 2, []) == 3
    assert log.committed == 2, "the commit index never moves back"


def test_maybe_append_refuses_to_overwrite_a_committed_entry() -> None:
    log = log_of(1, 1, 1)
    log.commit_to(3)
    with pytest.raises(InvariantViolation):
        log.maybe_append(1, 1, 3, ents(2, 2))


def test_find_conflict() -> None:
    log = log_of(1, 2, 3)
    assert log.find_conflict([]) == 0
    assert log.find_conflict(ents(1, 1, 2, 3)) == 0
    assert log.find_conflict(ents(2, 2, 3, 4)) == 4  # new entry
    assert log.find_conflict(ents(2, 2, 4)) == 3  # differing term
    assert log.find_conflict(ents(1, 4)) == 1


# --- find_conflict_by_term --------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        (5, 6, (5, 5)),
        (5, 5, (5, 5)),
        (5, 4, (2, 2)),
        (5, 2, (2, 2)),
        (5, 1, (0, 0)),
        (1, 2, (1, 2)),
        (1, 1, (0, 0)),
        (0, 0, (0, 0)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, want: tuple[int, int]) -> None:
    log = log_of(2, 2, 5, 5, 5)
    assert log.find_conflict_by_term(index, term) == want


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        (14, 9, (14, 4)),
        (14, 4, (14, 4)),
        (14, 3, (12, 3)),
        (11, 5, (11, 3)),
        (10, 5, (10, 3)),  # the snapshot's own entry
        (10, 3, (10, 3)),
        (9, 2, (9, 0)),  # below the snapshot: the term is unknown
        (4, 2, (4, 0)),
    ],
)
def test_find_conflict_by_term_on_a_compacted_log(
    index: int, term: int, want: tuple[int, int]
) -> None:
    log = log_of(3, 3, 4, 4, snapshot=(10, 3))
    assert log.find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_never_answers_a_later_term_at_the_snapshot() -> None:
    """The answer must satisfy term' <= term. At the snapshot boundary the only known
    term may be larger; the search must then go below the snapshot (term unknown, 0)
    rather than name the snapshot's entry, which certainly does not match."""
    log = log_of(3, 3, 4, 4, snapshot=(10, 3))
    index, term = log.find_conflict_by_term(14, 2)
    assert term <= 2
    assert index < 10


@given(st.lists(st.integers(min_value=1, max_value=4), max_size=12).map(sorted), st.data())
@SETTINGS
def test_find_conflict_by_term_property(terms: list[int], data: st.DataObject) -> None:
    log = log_of(*terms)
    index = data.draw(st.integers(min_value=0, max_value=len(terms)))
    term = data.draw(st.integers(min_value=0, max_value=5))
    got_index, got_term = log.find_conflict_by_term(index, term)
    assert got_index <= index
    assert got_term <= term
    assert log.term(got_index) == got_term
    assert all(t > term for t in terms[got_index:index]), "everything skipped mismatches"


# --- slices ----------------------------------------------------------------------------


def test_slice_byte_limit() -> None:
    log = RaftLog(entries=ents(1, 1, 1, 1, 1, 1, data=b"x" * 6))  # 30 bytes each
    assert [e.index for e in log.slice(1, 6, 1 << 20)] == [1, 2, 3, 4, 5]
    assert [e.index for e in log.slice(1, 6, 60)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, 89)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, 90)] == [1, 2, 3]
    assert [e.index for e in log.slice(2, 6, 0)] == [2], "at least one entry"
    assert log.slice(3, 3, 100) == []


def test_slice_bounds() -> None:
    log = log_of(1, 1, 1, snapshot=(4, 1))
    assert [e.index for e in log.slice(5, 8, 1000)] == [5, 6, 7]
    with pytest.raises(InvariantViolation):
        log.slice(4, 6, 1000)  # compacted
    with pytest.raises(InvariantViolation):
        log.slice(5, 9, 1000)  # beyond the end


# --- durability tracking --------------------------------------------------------------------


def test_unstable_entries_are_handed_out_once() -> None:
    log = RaftLog()
    log.append(ents(1, 1, 1, 1))
    assert log.unstable_entries() == ents(1, 1, 1, 1)
    assert log.unstable_entries() == [], "already being persisted"
    assert log.stable == 0 and log.persisting == 3
    log.append(ents(4, 1))
    assert log.unstable_entries() == ents(4, 1)
    log.stable_to(3, 1)
    assert log.stable == 3
    log.stable_to(4, 1)
    assert log.stable == 4
    assert log.unstable_entries() == []


def test_stable_to_ignores_stale_or_replaced_entries() -> None:
    log = RaftLog()
    log.append(ents(1, 1, 1, 1))
    log.unstable_entries()
    log.stable_to(9, 1)  # not in the log
    assert log.stable == 0
    log.stable_to(2, 5)  # wrong term
    assert log.stable == 0
    log.stable_to(2, 1)
    log.stable_to(1, 1)  # older than what is already stable
    assert log.stable == 2


def test_truncation_while_entries_are_being_persisted() -> None:
    """A write of entries that are then replaced must not mark the new ones durable."""
    log = RaftLog(entries=ents(1, 1))
    log.append(ents(2, 1, 1, 1))
    written = log.unstable_entries()  # 2..4 of term 1 are being written
    assert log.maybe_append(2, 1, 0, ents(3, 2, 2)) == 4  # 3..4 replaced by term 2
    assert log.persisting == 2
    log.stable_to(written[-1].index, written[-1].term)  # the old write completes
    assert log.stable == 1, "4 now has term 2: the completed write does not cover it"
    assert log.unstable_entries() == ents(3, 2, 2)
    log.stable_to(4, 2)
    assert log.stable == 4
    log.check_invariants()


def test_truncation_below_stable_rewinds_stable() -> None:
    log = log_of(1, 1, 1, 1)
    assert log.stable == 4
    log.maybe_append(1, 1, 0, ents(2, 2))
    assert (log.stable, log.persisting, log.last_index()) == (1, 1, 2)
    assert log.unstable_entries() == ents(2, 2)


# --- committing and applying --------------------------------------------------------------


def test_commit_to() -> None:
    log = log_of(1, 1, 1)
    assert log.commit_to(2)
    assert not log.commit_to(1), "never moves back"
    assert not log.commit_to(2)
    assert log.committed == 2
    with pytest.raises(InvariantViolation):
        log.commit_to(4)


def test_committed_to_apply() -> None:
    log = RaftLog(entries=ents(1, 1, 1, 1, 1, data=b"x" * 6))  # four, 30 bytes each
    assert log.committed_to_apply(1 << 20) == []
    log.commit_to(4)
    assert [e.index for e in log.committed_to_apply(60)] == [1, 2]
    assert (log.applying, log.applied) == (2, 0)
    assert [e.index for e in log.committed_to_apply(0)] == [3], "at least one entry"
    assert [e.index for e in log.committed_to_apply(1 << 20)] == [4]
    assert log.committed_to_apply(1 << 20) == []
    log.applied_to(4)
    log.applied_to(3)
    assert log.applied == 4
    log.check_invariants()


def test_committed_to_apply_after_restart_starts_after_applied() -> None:
    log = log_of(1, 1, 1, applied=2)
    log.commit_to(3)
    assert log.committed_to_apply(1 << 20) == ents(3, 1)


# --- compaction and snapshots -------------------------------------------------------------


def test_compact() -> None:
    log = log_of(1, 1, 2, 2, applied=3)
    log.compact(2)
    assert (log.snapshot_index, log.snapshot_term, log.first_index()) == (2, 1, 3)
    assert log.term(2) == 1
    assert log.term(1) is None
    assert terms_of(log) == [2, 2]
    log.compact(1)  # below the snapshot: nothing to do
    assert log.snapshot_index == 2
    log.compact(3)
    assert (log.snapshot_index, log.snapshot_term) == (3, 2)
    log.check_invariants()


def test_compact_only_what_is_applied_and_durable() -> None:
    log = log_of(1, 1, 1, applied=2)
    with pytest.raises(InvariantViolation):
        log.compact(3)  # not applied
    log.append(ents(4, 1))
    log.commit_to(4)
    log.committed_to_apply(1 << 20)
    log.applied_to(4)
    with pytest.raises(InvariantViolation):
        log.compact(4)  # applied but not yet durable
    log.unstable_entries()
    log.stable_to(4, 1)
    log.compact(4)
    assert log.last_index() == 4 and log.entries == []


def test_restore_replaces_everything() -> None:
    log = log_of(1, 1, 2, 2)
    log.commit_to(2)
    log.restore(10, 3)
    assert (log.snapshot_index, log.snapshot_term, log.entries) == (10, 3, [])
    assert (log.committed, log.applying, log.applied) == (10, 10, 10)
    assert (log.stable, log.persisting, log.last_index(), log.last_term()) == (10, 10, 10, 3)
    assert log.unstable_entries() == []
    log.append(ents(11, 3))
    assert log.unstable_entries() == ents(11, 3)
    log.check_invariants()


# --- invariants ---------------------------------------------------------------------------


def test_check_invariants_detects_broken_state() -> None:
    def broken(change: str) -> RaftLog:
        log = log_of(1, 1, 2, applied=1)
        log.commit_to(2)
        if change == "gap":
            log.entries[1] = Entry(5, 1)
        elif change == "term":
            log.entries[2] = Entry(3, 0)
        elif change == "commit":
            log.committed = 4
        elif change == "applied":
            log.applied = 3
        elif change == "applying":
            log.applying = 0
        elif change == "stable":
            log.stable = 4
        elif change == "snapshot":
            log.applied = log.applying = 1
            log.snapshot_index = 2
        return log

    broken("none").check_invariants()
    for change in ("gap", "term", "commit", "applied", "applying", "stable", "snapshot"):
        with pytest.raises(InvariantViolation):
            broken(change).check_invariants()


# --- a follower converging on a leader's log ------------------------------------------------


def leader_and_follower_logs() -> st.SearchStrategy[tuple[list[int], list[int], int]]:
    """Two logs (terms only) sharing a prefix, then diverging. The suffixes use disjoint
    terms, as a term has a single leader: equal (index, term) implies equal prefixes."""
    def build(common: list[int], a: list[int], b: list[int]) -> tuple[list[int], list[int], int]:
        top = common[-1] if common else 1
        leader = common + [top + 1 + 2 * t for t in sorted(a)]
        follower = common + [top + 2 + 2 * t for t in sorted(b)]
        return leader, follower, len(common)

    terms = st.lists(st.integers(min_value=1, max_value=3), max_size=6).map(sorted)
    suffix = st.lists(st.integers(min_value=0, max_value=3), max_size=6)
    return st.builds(build, terms, suffix, suffix)


def apply_appends(follower: RaftLog, leader: RaftLog, data: st.DataObject) -> None:
    """Feed the follower appends the way a leader probes: start after the leader's last
    entry; on a rejection, take the follower's hint, skip the leader's own entries whose
    term rules out a match, and retry; after a success, send some more entries."""
    last = leader.last_index()
    nxt = last + 1
    for _ in range(2 * last + 2):
        prev = nxt - 1
        prev_term = leader.term(prev)
        assert prev_term is not None
        k = data.draw(st.integers(min_value=1, max_value=last - prev)) if prev < last else 0
        got = follower.maybe_append(prev, prev_term, 0, leader.entries[prev:prev + k])
        follower.check_invariants()
        if got is None:
            hint, hint_term = follower.find_conflict_by_term(
                min(prev, follower.last_index()), prev_term)
            if hint_term > 0:
                hint, _ = leader.find_conflict_by_term(hint, hint_term)
            nxt = min(prev, hint + 1)
            assert nxt <= prev, "every rejection moves the probe back"
            continue
        assert got == prev + k
        assert terms_of(follower)[:got] == terms_of(leader)[:got]
        if got == last:
            return
        nxt = got + 1
    raise AssertionError("the follower did not converge")


@given(leader_and_follower_logs(), st.data())
@SETTINGS
def test_follower_converges_to_the_leader_log(
    logs: tuple[list[int], list[int], int], data: st.DataObject
) -> None:
    leader_terms, follower_terms, common = logs
    leader = log_of(*leader_terms)
    follower = log_of(*follower_terms)
    commit = data.draw(st.integers(min_value=0, max_value=common))
    follower.commit_to(commit)
    apply_appends(follower, leader, data)
    assert terms_of(follower)[:len(leader_terms)] == leader_terms
    assert follower.committed == commit
