"""The key-value state machine: operations, exactly-once sessions, eviction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.kv import Command, CommandDecodeError, KVStateMachine, MemoryBackend, Op, Status
from kvraft.raft.types import Entry
from kvraft.storage.statedb import StateStore


def _sm(**kw: int) -> KVStateMachine:
    return KVStateMachine(MemoryBackend(), **kw)


def test_operations() -> None:
    sm = _sm()
    b = sm.backend
    sm.apply(1, Command(Op.PUT, "k", "a").encode())
    sm.apply(2, Command(Op.APPEND, "k", "b").encode())
    sm.apply(3, Command(Op.APPEND, "new", "x").encode())
    assert b.get("k") == "ab" and b.get("new") == "x"
    r = sm.apply(4, Command(Op.DELETE, "k").encode())
    assert r.existed and b.get("k") is None
    assert not sm.apply(5, Command(Op.DELETE, "k").encode()).existed
    assert sm.apply(6, b"").status == Status.OK  # a leader's no-op


def test_retried_append_applies_once() -> None:
    sm = _sm()
    cmd = Command(Op.APPEND, "k", "x", client_id="c1", seq=1, ack_below=1)
    sm.apply(1, cmd.encode())
    sm.apply(2, cmd.encode())  # the same command committed twice (a retry)
    assert sm.backend.get("k") == "x"


def test_concurrent_seqs_and_ack_pruning() -> None:
    sm = _sm()
    for seq in (1, 3, 2):  # out-of-order completion of concurrent requests
        sm.apply(seq, Command(Op.APPEND, "k", str(seq), "c", seq, 1).encode())
    assert sm.backend.get("k") == "132"
    sm.apply(4, Command(Op.APPEND, "k", "4", "c", 4, 4).encode())  # acks 1..3
    sess = sm.backend.session("c")
    assert sess is not None and set(sess.results) == {4} and sess.ack_below == 4
    r = sm.apply(5, Command(Op.APPEND, "k", "2", "c", 2, 1).encode())  # a very late retry
    assert r.status == Status.DUPLICATE_FORGOTTEN
    assert sm.backend.get("k") == "1324"


def test_session_eviction_and_expiry() -> None:
    sm = _sm(max_sessions=2)
    for i, cid in enumerate(["a", "b", "c"], start=1):
        sm.apply(i, Command(Op.PUT, cid, "v", cid, 1, 1).encode())
    assert sm.backend.session("a") is None  # least recently used, evicted
    r = sm.apply(4, Command(Op.PUT, "a", "again", "a", 2, 2).encode())
    assert r.status == Status.SESSION_EXPIRED
    assert sm.backend.get("a") == "v"


def test_bad_command_is_rejected_not_fatal() -> None:
    sm = _sm()
    assert sm.apply(1, b"\xc1garbage").status == Status.BAD_COMMAND
    with pytest.raises(CommandDecodeError):
        Command.decode(b"\x93\x01\x02\x03")


@st.composite
def _commands(draw: st.DrawFn) -> list[Command]:
    n = draw(st.integers(1, 40))
    out = []
    for _ in range(n):
        op = draw(st.sampled_from(list(Op)))
        key = draw(st.sampled_from(["a", "b", "c"]))
        cid = draw(st.sampled_from(["", "x", "y"]))
        seq = draw(st.integers(1, 6))
        out.append(Command(op, key, draw(st.text(max_size=3)), cid, seq,
                           draw(st.integers(0, seq))))
    return out


@settings(max_examples=60, deadline=None)
@given(_commands())
def test_sqlite_backend_matches_memory(tmp_path_factory: pytest.TempPathFactory,
                                       cmds: list[Command]) -> None:
    """Determinism across backends: same commands, same results and state."""
    mem = _sm(max_sessions=2)
    store = StateStore(tmp_path_factory.mktemp("s") / "state.db", max_sessions=2)
    try:
        entries = [Entry(i, 1, c.encode()) for i, c in enumerate(cmds, start=1)]
        got = store.apply_batch(entries)
        want = [mem.apply(e.index, e.data) for e in entries]
        assert got == want
        for k in "abc":
            assert store.read(k) == mem.backend.get(k)
        assert store.applied() == (len(cmds), 1)
    finally:
        store.close()


def test_state_store_reopens_with_sessions(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    s = StateStore(p)
    s.apply_batch([Entry(1, 1, Command(Op.APPEND, "k", "x", "c", 1, 1).encode())])
    s.close()
    s = StateStore(p)
    s.apply_batch([Entry(2, 1, Command(Op.APPEND, "k", "x", "c", 1, 1).encode())])
    assert s.read("k") == "x"  # the retry after a restart was deduplicated
    assert s.applied() == (2, 1)
    s.close()
