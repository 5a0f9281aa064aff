"""Tests for kvraft.raft.progress: follower progress states and the in-flight window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.progress import Inflights, Progress, ProgressState

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300)


def progress(match: int = 0, next_: int = 1, *, count: int = 4, size: int = 1 << 20,
             state: ProgressState = ProgressState.PROBE) -> Progress:
    return Progress(match=match, next=next_, inflights=Inflights(count, size), state=state)


# --- Inflights --------------------------------------------------------------------------


def test_inflights_full_by_count() -> None:
    w = Inflights(max_count=3, max_bytes=1 << 20)
    for last in (5, 7, 9):
        assert not w.full()
        w.add(last, 10)
    assert w.full()
    assert len(w) == 3
    w.free_le(6)
    assert len(w) == 2 and not w.full()


def test_inflights_full_by_bytes() -> None:
    w = Inflights(max_count=100, max_bytes=100)
    w.add(1, 60)
    assert not w.full()
    w.add(2, 40)
    assert w.full(), "a window holding max_bytes is full"
    w.free_le(1)
    assert not w.full()
    w.add(3, 500)
    assert w.full(), "one oversized message fills the window"


def test_inflights_free_le() -> None:
    w = Inflights(max_count=10, max_bytes=1000)
    for last in (3, 6, 9, 12):
        w.add(last, 100)
    w.free_le(2)
    assert len(w) == 4, "nothing at or below 2"
    w.free_le(6)
    assert len(w) == 2
    w.free_le(10)
    assert len(w) == 1
    w.free_le(100)
    assert len(w) == 0 and not w.full()
    w.add(13, 1000)
    assert w.full(), "the byte count went back to zero as messages were freed"


def test_inflights_free_first_one() -> None:
    w = Inflights(max_count=2, max_bytes=1000)
    w.free_first_one()  # empty: nothing happens
    w.add(4, 10)
    w.add(8, 10)
    assert w.full()
    w.free_first_one()
    assert len(w) == 1 and not w.full()
    w.free_le(7)
    assert len(w) == 1, "the message ending at 8 is still in flight"


def test_inflights_reset() -> None:
    w = Inflights(max_count=2, max_bytes=50)
    w.add(1, 30)
    w.add(2, 30)
    w.reset()
    assert len(w) == 0 and not w.full()
    w.add(3, 49)
    assert not w.full(), "bytes were reset too"


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=40)),
                max_size=40))
@SETTINGS
def test_inflights_matches_a_model(ops: list[tuple[bool, int]]) -> None:
    w = Inflights(max_count=5, max_bytes=120)
    model: list[tuple[int, int]] = []
    last = 0
    for is_add, n in ops:
        if is_add:
            if w.full():
                continue  # a sender never adds to a full window
            last += n
            w.add(last, n)
            model.append((last, n))
        else:
            ack = last - n
            w.free_le(ack)
            model = [(i, b) for i, b in model if i > ack]
        assert len(w) == len(model)
        assert w.full() == (len(model) >= 5 or sum(b for _, b in model) >= 120)


# --- Progress state transitions -----------------------------------------------------------


def test_become_replicate_streams_after_match() -> None:
    pr = progress(match=5, next_=9)
    pr.probe_sent = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (ProgressState.REPLICATE, 6, False)


def test_become_probe_from_replicate_restarts_after_match() -> None:
    pr = progress(match=5, next_=12, state=ProgressState.REPLICATE)
    pr.inflights.add(8, 10)
    pr.inflights.add(11, 10)
    pr.become_probe()
    assert (pr.state, pr.next) == (ProgressState.PROBE, 6)
    assert len(pr.inflights) == 0, "messages in flight are forgotten"
    assert not pr.is_paused()


def test_become_probe_after_a_snapshot() -> None:
    pr = progress(match=3, next_=4)
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 20)
    assert pr.is_paused(), "nothing is sent while a snapshot is pending"
    pr.become_probe()
    assert (pr.state, pr.next, pr.pending_snapshot) == (ProgressState.PROBE, 21, 0)


def test_become_probe_after_a_failed_snapshot_uses_match() -> None:
    pr = progress(match=3, next_=4)
    pr.become_snapshot(20)
    pr.pending_snapshot = 0  # the runtime reported a failure
    pr.become_probe()
    assert pr.next == 4


def test_become_snapshot_resets_the_window() -> None:
    pr = progress(match=3, next_=9, state=ProgressState.REPLICATE)
    pr.inflights.add(8, 10)
    pr.become_snapshot(20)
    assert len(pr.inflights) == 0 and pr.pending_snapshot == 20


# --- acknowledgements ---------------------------------------------------------------------


def test_maybe_update() -> None:
    pr = progress(match=3, next_=5)
    pr.probe_sent = True
    assert pr.maybe_update(6)
    assert (pr.match, pr.next, pr.probe_sent) == (6, 7, False)
    assert not pr.maybe_update(4), "a stale acknowledgement does not move match"
    assert (pr.match, pr.next) == (6, 7)
    assert not pr.maybe_update(6)


def test_maybe_update_keeps_an_optimistic_next() -> None:
    pr = progress(match=3, next_=10, state=ProgressState.REPLICATE)
    assert pr.maybe_update(5)
    assert (pr.match, pr.next) == (5, 10)


def test_stale_ack_keeps_the_probe_pause() -> None:
    pr = progress(match=6, next_=7)
    pr.probe_sent = True
    assert not pr.maybe_update(6)
    assert pr.probe_sent and pr.is_paused()


# --- rejections -----------------------------------------------------------------------------


def test_maybe_decrease_to_in_replicate() -> None:
    pr = progress(match=5, next_=12, state=ProgressState.REPLICATE)
    assert not pr.maybe_decrease_to(5, 0), "rejection at or below match is stale"
    assert not pr.maybe_decrease_to(3, 0)
    assert pr.next == 12
    assert pr.maybe_decrease_to(9, 2)
    assert pr.next == 6, "restart right after match; the hint is not used"


def test_maybe_decrease_to_in_probe_uses_the_hint() -> None:
    pr = progress(match=0, next_=11)
    pr.probe_sent = True
    assert pr.maybe_decrease_to(10, 4)
    assert (pr.next, pr.probe_sent) == (5, False)


def test_maybe_decrease_to_in_probe_ignores_stale_rejections() -> None:
    """Only a rejection of the append actually outstanding (at next - 1) counts."""
    pr = progress(match=0, next_=11)
    pr.probe_sent = True
    assert not pr.maybe_decrease_to(9, 2)
    assert not pr.maybe_decrease_to(12, 2)
    assert (pr.next, pr.probe_sent) == (11, True)


def test_maybe_decrease_to_never_goes_below_match() -> None:
    pr = progress(match=4, next_=11)
    assert pr.maybe_decrease_to(10, 1)
    assert pr.next == 5


def test_maybe_decrease_to_never_moves_next_forward() -> None:
    pr = progress(match=0, next_=6)
    assert pr.maybe_decrease_to(5, 30)
    assert pr.next == 5, "a hint beyond the rejected index is capped by it"


def test_maybe_decrease_to_while_a_snapshot_is_pending() -> None:
    pr = progress(match=2, next_=6)
    pr.become_snapshot(9)
    assert not pr.maybe_decrease_to(3, 0)
    assert pr.state == ProgressState.SNAPSHOT


# --- pausing --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(ProgressState))
def test_is_paused(state: ProgressState) -> None:
    pr = progress(match=1, next_=2, count=1)
    pr.state = state
    if state == ProgressState.PROBE:
        assert not pr.is_paused()
        pr.probe_sent = True
        assert pr.is_paused()
    elif state == ProgressState.REPLICATE:
        assert not pr.is_paused()
        pr.inflights.add(5, 10)
        assert pr.is_paused()
    else:
        assert pr.is_paused()


# --- the match < next invariant -------------------------------------------------------------


ops = st.lists(st.tuples(
    st.sampled_from(["update", "reject", "probe", "replicate", "snapshot"]),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=30),
), max_size=40)


@given(ops)
@SETTINGS
def test_match_stays_below_next(script: list[tuple[str, int, int]]) -> None:
    pr = progress(match=0, next_=1)
    last_match = 0
    for kind, a, b in script:
        if kind == "update":
            pr.maybe_update(a)
        elif kind == "reject":
            pr.maybe_decrease_to(a, b)
        elif kind == "probe":
            pr.become_probe()
        elif kind == "replicate":
            pr.become_replicate()
        else:
            pr.become_snapshot(max(pr.match, a))
        assert pr.match < pr.next
        assert pr.match >= last_match, "match never decreases"
        last_match = pr.match
