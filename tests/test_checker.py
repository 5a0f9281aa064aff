"""Tests for kvraft.check: the history format and the linearizability checker."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.check import (
    CheckResult,
    HistoryFormatError,
    Operation,
    check_history,
    dump_history,
    dumps_history,
    load_history,
    loads_history,
)
from kvraft.check.command import check_command, format_result

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300)

# --------------------------------------------------------------------------- helpers

_ids = itertools.count(1)


def op(
    kind: str,
    invoke: int,
    complete: int | None,
    value: str | None = None,
    result: str | None = None,
    outcome: str = "ok",
    key: str = "k",
    client: str = "c1",
) -> Operation:
    return Operation(
        id=next(_ids),
        client=client,
        op=kind,  # type: ignore[arg-type]
        key=key,
        value=value,
        result=result,
        invoke_ns=invoke,
        complete_ns=complete,
        outcome=outcome,  # type: ignore[arg-type]
    )


def verdict(ops: Sequence[Operation]) -> str:
    """The checker's verdict; for a violation, also checks its witness."""
    result = check_history(ops)
    if result.verdict == "violation":
        _assert_witness_sound(ops, result)
    return result.verdict


def _assert_witness_sound(ops: Sequence[Operation], result: CheckResult) -> None:
    """The witness of every violating key is a sub-history and itself a violation."""
    ids = {o.id for o in ops}
    for key_result in result.keys:
        frag = key_result.fragment
        if key_result.verdict != "violation":
            assert frag is None
            continue
        assert frag is not None
        assert {o.id for o in frag.witness} <= ids
        assert frag.blocking in frag.stuck
        assert check_history(list(frag.witness), shrink=False).verdict == "violation"
        assert format_result(result)  # rendering never fails


def apply(state: str | None, o: Operation) -> str | None:
    """The sequential model, written independently of the checker's."""
    if o.op == "put":
        return o.value
    if o.op == "append":
        return (state or "") + (o.value or "")
    if o.op == "delete":
        return None
    return state


# ------------------------------------------------------------------ simulated clients


def simulate(
    seed: int,
    *,
    clients: int = 8,
    keys: int = 10,
    ops_per_key: int = 1000,
    p_fail: float = 0.02,
    p_unknown: float = 0.02,
    weights: tuple[int, int, int, int] = (40, 25, 25, 10),
    final_reads: bool = False,
) -> list[Operation]:
    """A history of ``clients`` concurrent clients against a true atomic store.

    Each client issues ops back to back with a random think time; each op
    takes a random duration and takes effect atomically at a random instant
    inside its interval (``ok``).  ``fail`` ops never take effect.  ``unknown``
    writes take effect with probability 1/2 at a random instant after their
    invocation (possibly after the client gave up), else never.  ``weights``
    are the odds of get/put/append/delete.  With ``final_reads``, one more ok
    get per key, after everything else, reads the final state.
    """
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(keys)]
    plan = [k for k in key_names for _ in range(ops_per_key)]
    rng.shuffle(plan)
    drafts: list[dict[str, object]] = []
    effects: list[tuple[int, int]] = []  # (effect time, draft index)
    clock = [rng.randrange(0, 50_000) for _ in range(clients)]
    for n, key in enumerate(plan):
        c = n % clients
        invoke = clock[c] + rng.randrange(0, 100_000)
        duration = rng.randrange(20_000, 800_000)
        complete: int | None = invoke + duration
        clock[c] = invoke + duration
        kind = rng.choices(["get", "put", "append", "delete"], weights)[0]
        value = {"put": f"c{c}.{n}", "append": f"<{c}.{n}>"}.get(kind)
        r = rng.random()
        outcome = "fail" if r < p_fail else "unknown" if r < p_fail + p_unknown else "ok"
        if outcome == "ok":
            effects.append((invoke + rng.randrange(0, duration + 1), len(drafts)))
        elif outcome == "unknown" and kind != "get" and rng.random() < 0.5:
            effects.append((invoke + rng.randrange(0, 3 * duration), len(drafts)))
        if outcome == "unknown" and rng.random() < 0.5:
            complete = None
        drafts.append(dict(id=n + 1, client=f"c-{c}", op=kind, key=key, value=value,
                           result=None, invoke_ns=invoke, complete_ns=complete, outcome=outcome))
    state: dict[str, str | None] = {}
    for _, i in sorted(effects):
        d = drafts[i]
        probe = Operation(**d)  # type: ignore[arg-type]
        if d["op"] == "get":
            d["result"] = state.get(probe.key)
        else:
            state[probe.key] = apply(state.get(probe.key), probe)
    ops = [Operation(**d) for d in drafts]  # type: ignore[arg-type]
    if final_reads:
        end = max(max(clock), max(effects, default=(0, 0))[0]) + 1
        for n, key in enumerate(key_names):
            ops.append(Operation(len(plan) + n + 1, "final", "get", key, None, state.get(key),
                                 end, end + 1000, "ok"))
    return ops


# ------------------------------------------------------------------- basic violations


def test_stale_read_rejected() -> None:
    h = [
        op("put", 0, 10, "a"),
        op("put", 20, 30, "b", client="c2"),
        op("get", 40, 50, result="a", client="c3"),
    ]
    assert verdict(h) == "violation"
    assert verdict(h[:2] + [replace(h[2], result="b")]) == "ok"


def test_stale_read_fragment_names_the_read() -> None:
    h = [
        op("put", 0, 10, "a"),
        op("put", 20, 30, "b", client="c2"),
        op("get", 40, 50, result="a", client="c3"),
        op("get", 60, 70, result="b", client="c3"),
    ]
    res = check_history(h)
    frag = res.keys[0].fragment
    assert frag is not None
    assert frag.blocking == h[2]
    assert frag.state == "b"
    assert [o.id for o in frag.prefix] == [h[0].id, h[1].id]
    assert h[3] not in frag.witness
    assert h[2] in frag.witness


def test_lost_acknowledged_write_rejected() -> None:
    h = [
        op("append", 0, 10, "x"),
        op("append", 20, 30, "y", client="c2"),
        op("put", 40, 50, "z"),
        op("get", 60, 70, result="xy", client="c3"),  # the acknowledged put is lost
    ]
    assert verdict(h) == "violation"
    h2 = [op("append", 0, 10, "x"), op("append", 5, 30, "y", client="c2"),
          op("get", 40, 50, result="y", client="c3")]
    assert verdict(h2) == "violation"


@pytest.mark.parametrize("seed", [21, 22])
def test_generated_lost_or_duplicated_append_is_found(seed: int) -> None:
    """Acknowledged appends all show up, once each, in a read after they all completed."""
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=1, ops_per_key=300, p_fail=0.05, p_unknown=0.0,
                 weights=(40, 0, 60, 0), final_reads=True)
    assert verdict(h) == "ok"
    final = h[-1]
    assert final.result is not None
    rng = random.Random(seed)
    token = str(rng.choice([o for o in h if o.op == "append" and o.outcome == "ok"]).value)
    assert final.result.count(token) == 1
    lost = final.result.replace(token, "")
    duplicated = final.result.replace(token, token + token)
    for bad_result in (lost, duplicated):
        bad = h[:-1] + [replace(final, result=bad_result)]
        assert verdict(bad) == "violation"


def test_duplicated_append_rejected() -> None:
    h = [op("append", 0, 10, "x"), op("get", 20, 30, result="xx", client="c2")]
    assert verdict(h) == "violation"
    h2 = [
        op("append", 0, 100, "a"),
        op("append", 10, 90, "b", client="c2"),
        op("get", 120, 130, result="aba", client="c3"),
    ]
    assert verdict(h2) == "violation"
    assert verdict(h2[:2] + [replace(h2[2], result="ba")]) == "ok"


def test_never_written_value_rejected() -> None:
    assert verdict([op("get", 0, 10, result="ghost")]) == "violation"
    h = [op("put", 0, 10, "a"), op("get", 5, 15, result="b", client="c2")]
    assert verdict(h) == "violation"


def test_failed_write_must_not_be_visible() -> None:
    h = [op("put", 0, 10, "a", outcome="fail"), op("get", 20, 30, result="a", client="c2")]
    assert verdict(h) == "violation"
    assert verdict(h[:1] + [replace(h[1], result=None)]) == "ok"


def test_empty_and_write_only_histories_are_ok() -> None:
    assert check_history([]).verdict == "ok"
    assert verdict([op("put", 0, 10, "a"), op("delete", 0, 10, client="c2")]) == "ok"


# -------------------------------------------------------- reordering of overlapping ops


def test_overlapping_ops_may_be_reordered() -> None:
    # put a is invoked first but takes effect after put b
    h = [op("put", 0, 100, "a"), op("put", 10, 20, "b", client="c2"),
         op("get", 30, 40, result="b", client="c3"), op("get", 110, 120, result="a", client="c3")]
    assert verdict(h) == "ok"
    # a read may see a write invoked after the read started
    h2 = [op("get", 0, 100, result="v"), op("put", 50, 60, "v", client="c2")]
    assert verdict(h2) == "ok"
    # concurrent appends seen in the opposite order of invocation
    h3 = [op("append", 0, 50, "a"), op("append", 10, 40, "b", client="c2"),
          op("get", 60, 70, result="ba", client="c3")]
    assert verdict(h3) == "ok"


def test_touching_intervals_are_concurrent() -> None:
    h = [op("put", 0, 10, "a"), op("get", 10, 20, result=None, client="c2")]
    assert verdict(h) == "ok"
    assert verdict([op("put", 0, 10, "a"), op("get", 11, 20, result=None, client="c2")]) == (
        "violation"
    )


def test_reads_interleaved_with_concurrent_writes() -> None:
    # two readers observe a, then b, consistent with one order of the puts
    h = [
        op("put", 0, 100, "a", client="w1"),
        op("put", 0, 100, "b", client="w2"),
        op("get", 10, 20, result="a", client="r1"),
        op("get", 30, 40, result="b", client="r2"),
        op("get", 50, 60, result="b", client="r1"),
    ]
    assert verdict(h) == "ok"
    # ... but not a, then b, then a again
    assert verdict(h[:4] + [replace(h[4], result="a")]) == "violation"


# ----------------------------------------------------------------------- unknown writes


def test_unknown_write_visible_later_is_accepted() -> None:
    h = [op("put", 0, 10, "a"), op("put", 20, None, "b", outcome="unknown", client="c2"),
         op("get", 1000, 1010, result="b", client="c3")]
    assert verdict(h) == "ok"
    # it may even take effect after the client gave up
    h2 = [op("append", 0, 10, "x", outcome="unknown"), op("get", 500, 510, result=None),
          op("get", 600, 610, result="x")]
    assert verdict(h2) == "ok"


def test_unknown_write_that_never_appears_is_accepted() -> None:
    h = [op("put", 0, 10, "a"), op("put", 20, 30, "b", outcome="unknown", client="c2"),
         op("get", 1000, 1010, result="a", client="c3")]
    assert verdict(h) == "ok"
    res = check_history(h)
    assert res.keys[0].dropped == 1  # unobservable, so it was pruned


def test_unknown_write_seen_before_its_invocation_is_rejected() -> None:
    h = [op("put", 0, 10, "a"), op("get", 20, 30, result="b", client="c3"),
         op("put", 40, None, "b", outcome="unknown", client="c2")]
    assert verdict(h) == "violation"


def test_unknown_write_cannot_be_undone() -> None:
    h = [op("put", 0, 10, "a"), op("put", 20, 25, "b", outcome="unknown", client="c2"),
         op("get", 30, 40, result="b", client="c3"), op("get", 50, 60, result="a", client="c3")]
    assert verdict(h) == "violation"


def test_unknown_get_is_ignored() -> None:
    h = [op("put", 0, 10, "a"), op("get", 20, None, outcome="unknown")]
    assert verdict(h) == "ok"


# ---------------------------------------------------------- brute-force cross-checking


def brute_force(ops: Sequence[Operation]) -> bool:
    """Linearizable? By enumerating every ordering of every allowed op subset."""
    live = [o for o in ops if o.outcome == "ok" or (o.outcome == "unknown" and o.is_write)]
    oks = [o for o in live if o.outcome == "ok"]
    unknown = [o for o in live if o.outcome == "unknown"]

    def precedes(a: Operation, b: Operation) -> bool:
        return a.outcome == "ok" and a.complete_ns is not None and a.complete_ns < b.invoke_ns

    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            for perm in itertools.permutations(oks + list(extra)):
                if any(precedes(perm[j], perm[i]) for i in range(len(perm))
                       for j in range(i + 1, len(perm))):
                    continue
                state: str | None = None
                for o in perm:
                    if o.op == "get" and o.result != state:
                        break
                    state = apply(state, o)
                else:
                    return True
    return False


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["get", "put", "append", "delete"]))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "unknown"]))
        invoke = draw(st.integers(0, 10))
        complete = invoke + draw(st.integers(0, 6))
        value = draw(st.sampled_from(["a", "b", ""])) if kind in ("put", "append") else None
        result = None
        if kind == "get" and outcome == "ok":
            result = draw(st.sampled_from([None, "a", "b", "", "ab", "ba", "aa"]))
        if outcome == "unknown" and draw(st.booleans()):
            complete_ns: int | None = None
        else:
            complete_ns = complete
        ops.append(Operation(i, f"c{i}", kind, "k", value, result, invoke, complete_ns, outcome))
    return ops


@SETTINGS
@given(tiny_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    expected = "ok" if brute_force(history) else "violation"
    assert verdict(history) == expected


@st.composite
def tiny_model_histories(draw: st.DrawFn) -> list[Operation]:
    """Tiny histories produced by a true atomic register, sometimes with one read corrupted."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    h = simulate(seed, clients=rng.randint(1, 4), keys=1, ops_per_key=rng.randint(1, 7),
                 p_fail=0.1, p_unknown=0.2)
    h = [replace(o, value=rng.choice(["a", "b", "ab"]) if o.value is not None else None) for o in h]
    h = _replay_results(h, seed)
    reads = [o for o in h if o.op == "get" and o.outcome == "ok"]
    if reads and draw(st.booleans()):
        victim = rng.choice(reads)
        wrong = draw(st.sampled_from([None, "a", "b", "ab", "ba", "aab", "abab"]))
        h = [replace(o, result=wrong) if o.id == victim.id else o for o in h]
    return h


def _replay_results(h: list[Operation], seed: int) -> list[Operation]:
    """Recompute read results after changing written values: effects at random instants."""
    rng = random.Random(seed ^ 0x5EED)
    effects = []
    for o in h:
        end = o.complete_ns if o.complete_ns is not None else o.invoke_ns + 10**6
        if o.outcome == "ok" or (o.outcome == "unknown" and o.is_write and rng.random() < 0.5):
            effects.append((rng.randint(o.invoke_ns, end), o.id))
    by_id = {o.id: o for o in h}
    state: str | None = None
    for _, i in sorted(effects):
        o = by_id[i]
        if o.op == "get":
            by_id[i] = replace(o, result=state)
        else:
            state = apply(state, o)
    return [by_id[o.id] for o in h]


@SETTINGS
@given(tiny_model_histories())
def test_agrees_with_brute_force_on_model_histories(history: list[Operation]) -> None:
    expected = "ok" if brute_force(history) else "violation"
    assert verdict(history) == expected


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 3))
def test_small_simulated_histories_are_ok(seed: int, clients: int, keys: int) -> None:
    h = simulate(seed, clients=clients, keys=keys, ops_per_key=30, p_fail=0.1, p_unknown=0.1)
    assert verdict(h) == "ok", f"seed={seed}"


# ------------------------------------------------------------ large simulated histories


def test_large_history_10_keys_1000_ops_8_clients() -> None:
    seed = 20240611
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=10, ops_per_key=1000)
    assert len(h) == 10_000
    start = time.perf_counter()
    res = check_history(h)
    elapsed = time.perf_counter() - start
    print(f"10 keys x 1000 ops x 8 clients: {elapsed:.2f}s, {res.steps} steps")
    assert res.verdict == "ok"
    assert [k.verdict for k in res.keys] == ["ok"] * 10


def test_single_hot_key_with_8_clients_is_ok() -> None:
    seed = 7
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=1, ops_per_key=1000)
    start = time.perf_counter()
    res = check_history(h)
    print(f"1 key x 1000 ops x 8 clients: {time.perf_counter() - start:.2f}s, {res.steps} steps")
    assert res.verdict == "ok"


def test_single_hot_key_with_16_clients_is_ok() -> None:
    seed = 16
    print(f"seed={seed}")
    h = simulate(seed, clients=16, keys=1, ops_per_key=2000)
    start = time.perf_counter()
    res = check_history(h)
    print(f"1 key x 2000 ops x 16 clients: {time.perf_counter() - start:.2f}s, {res.steps} steps")
    assert res.verdict == "ok"


def _corruptible_reads(h: list[Operation], rng: random.Random) -> list[Operation]:
    reads = [o for o in h if o.op == "get" and o.outcome == "ok"]
    rng.shuffle(reads)
    return reads


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutated_read_of_unwritten_value_is_found(seed: int) -> None:
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=10, ops_per_key=300)
    victim = _corruptible_reads(h, random.Random(seed))[0]
    bad = [replace(o, result="never-written") if o.id == victim.id else o for o in h]
    res = check_history(bad)
    assert res.verdict == "violation"
    _assert_witness_sound(bad, res)
    assert [k.key for k in res.keys if k.verdict == "violation"] == [victim.key]
    frag = next(k.fragment for k in res.keys if k.fragment is not None)
    print(f"witness: {len(frag.witness)} ops")
    assert victim.id in {o.id for o in frag.witness}
    assert len(frag.witness) <= 40


def _stale_mutation(h: list[Operation], rng: random.Random) -> tuple[Operation, str]:
    """A read and a value it cannot return: a put overwritten before the read began."""
    for g in _corruptible_reads(h, rng):
        writes = [o for o in h if o.key == g.key and o.is_write and o.outcome == "ok"]
        for w in writes:
            assert w.complete_ns is not None and g.complete_ns is not None
            if w.complete_ns >= g.invoke_ns:
                continue
            olds = [p for p in writes if p.op == "put" and p.complete_ns is not None
                    and p.complete_ns < w.invoke_ns and p.value != g.result]
            if olds:
                return g, str(rng.choice(olds).value)
    raise AssertionError("no stale read candidate")


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_mutated_stale_read_is_found(seed: int) -> None:
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=10, ops_per_key=300)
    victim, stale = _stale_mutation(h, random.Random(seed))
    bad = [replace(o, result=stale) if o.id == victim.id else o for o in h]
    res = check_history(bad)
    assert res.verdict == "violation"
    _assert_witness_sound(bad, res)


def test_mutated_hot_key_stale_read_is_found() -> None:
    seed = 5
    print(f"seed={seed}")
    h = simulate(seed, clients=8, keys=1, ops_per_key=400)
    victim, stale = _stale_mutation(h, random.Random(seed))
    bad = [replace(o, result=stale) if o.id == victim.id else o for o in h]
    start = time.perf_counter()
    res = check_history(bad)
    print(f"hot key violation: {time.perf_counter() - start:.2f}s, {res.steps} steps")
    assert res.verdict == "violation"
    _assert_witness_sound(bad, res)


# --------------------------------------------------------------------------- budgets


def test_step_budget_exhaustion_is_unknown() -> None:
    h = simulate(3, clients=8, keys=2, ops_per_key=200)
    res = check_history(h, step_budget=10)
    assert res.verdict == "unknown"
    assert all(k.verdict == "unknown" and k.steps <= 10 for k in res.keys)
    assert "step budget" in res.keys[0].reason


def _hard_history(n: int = 24) -> list[Operation]:
    """n fully concurrent appends of "x"/"y", then an impossible read: exponential."""
    h = [op("append", 0, 100, "xy"[i % 2], client=f"c{i}") for i in range(n)]
    h.append(op("get", 200, 210, result="x" * (n // 2 + 1) + "y" * (n // 2 - 1), client="r"))
    return h


def test_time_budget_exhaustion_is_unknown() -> None:
    start = time.perf_counter()
    res = check_history(_hard_history(), time_budget_s=0.3)
    elapsed = time.perf_counter() - start
    print(f"time-budgeted check returned after {elapsed:.2f}s")
    assert elapsed < 5
    assert res.verdict == "unknown"
    assert "time budget" in res.keys[0].reason


def test_step_budget_exhaustion_on_hard_history() -> None:
    res = check_history(_hard_history(), step_budget=10)
    assert res.verdict == "unknown" and res.keys[0].steps <= 10
    res = check_history(_hard_history(), step_budget=20_000)
    assert res.verdict == "unknown" and res.keys[0].steps <= 20_000
    assert check_history(_hard_history(6)).verdict == "violation"


def test_violation_dominates_unknown() -> None:
    hard = simulate(3, clients=8, keys=1, ops_per_key=200)
    bad = [op("get", 0, 10, result="ghost", key="other")]
    res = check_history(hard + bad, step_budget=50)
    assert [k.verdict for k in res.keys] == ["unknown", "violation"]
    assert res.verdict == "violation"


# ------------------------------------------------------------------- history format


def test_round_trip(tmp_path: Path) -> None:
    h = simulate(9, clients=3, keys=2, ops_per_key=20, p_unknown=0.2)
    path = tmp_path / "h.jsonl"
    dump_history(h, path)
    assert load_history(path) == h
    assert loads_history(dumps_history(h)) == h


@SETTINGS
@given(st.lists(st.text(), max_size=5), st.text())
def test_round_trip_arbitrary_strings(values: list[str], key: str) -> None:
    h = [op("put", i, i + 1, v, key=key) for i, v in enumerate(values)]
    assert loads_history(dumps_history(h)) == h


def test_unknown_fields_and_blank_lines_are_ignored() -> None:
    line = ('{"id": 1, "client": "c", "op": "get", "key": "k", "value": null, "result": null, '
            '"invoke_ns": 1, "complete_ns": 2, "outcome": "ok", "extra": {"x": [1]}}')
    ops = loads_history("\n" + line + "\n   \n")
    assert ops == [Operation(1, "c", "get", "k", None, None, 1, 2, "ok")]


GOOD = {"id": 1, "client": "c", "op": "put", "key": "k", "value": "v", "result": None,
        "invoke_ns": 1, "complete_ns": 2, "outcome": "ok"}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"op": None}, "field 'op'"),
        ({"op": "cas"}, "field 'op'"),
        ({"id": True}, "field 'id' must be integer"),
        ({"invoke_ns": "1"}, "field 'invoke_ns' must be integer"),
        ({"value": 3}, "field 'value' must be string or null"),
        ({"value": None}, "value must be a string for put"),
        ({"result": "x"}, "result must be null"),
        ({"outcome": "maybe"}, "field 'outcome'"),
        ({"complete_ns": None}, "complete_ns may be null only"),
        ({"complete_ns": 0}, "complete_ns must not be before"),
        ({"id": 7}, "duplicate id 7"),
    ],
)
def test_malformed_record_names_the_line(patch: dict[str, object], message: str) -> None:
    first = dict(GOOD, id=7)
    bad = {**GOOD, "id": 8, **patch}
    text = json.dumps(first) + "\n\n" + json.dumps(bad) + "\n"
    with pytest.raises(HistoryFormatError) as info:
        loads_history(text)
    assert info.value.line == 3
    assert message in str(info.value)
    assert str(info.value).startswith("line 3: ")


def test_missing_field_and_bad_json_name_the_line() -> None:
    missing = {k: v for k, v in GOOD.items() if k != "key"}
    with pytest.raises(HistoryFormatError, match=r"line 1: missing required field 'key'"):
        loads_history(json.dumps(missing))
    with pytest.raises(HistoryFormatError, match=r"line 2: invalid JSON"):
        loads_history(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(HistoryFormatError, match=r"line 1: expected a JSON object"):
        loads_history("[1, 2]")


# ---------------------------------------------------------------------- the command


def _write(path: Path, ops: Sequence[Operation]) -> str:
    dump_history(ops, path)
    return str(path)


def test_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(tmp_path / "good.jsonl", [op("put", 0, 10, "a"), op("get", 20, 30, result="a")])
    bad = _write(tmp_path / "bad.jsonl", [op("put", 0, 10, "a"), op("get", 20, 30, result="b")])
    hard = _write(tmp_path / "hard.jsonl", simulate(4, clients=4, keys=1, ops_per_key=100))

    res = runner.invoke(check_command, [good])
    assert res.exit_code == 0, res.output
    assert "OK: 1 keys (1 ok, 0 violation, 0 unknown)" in res.output

    res = runner.invoke(check_command, [bad])
    assert res.exit_code == 1, res.output
    assert 'key "k": 2 ops, VIOLATION' in res.output
    assert "witness" in res.output and "<- blocking" in res.output

    res = runner.invoke(check_command, [hard, "--step-budget", "5"])
    assert res.exit_code == 2, res.output
    assert "UNKNOWN (step budget exhausted)" in res.output


def test_command_json_report(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jsonl", [op("put", 0, 10, "a"), op("get", 20, 30, result="b")])
    res = CliRunner().invoke(check_command, [bad, "--json", "--time-budget-s", "5"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["verdict"] == "violation"
    (key,) = report["keys"]
    assert key["key"] == "k" and key["verdict"] == "violation"
    assert key["fragment"]["blocking"]["result"] == "b"
    assert len(key["fragment"]["witness"]) == 2


def test_command_malformed_input(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"id": 2, "op": "get"}\n')
    res = CliRunner().invoke(check_command, [str(path)])
    assert res.exit_code == 2
    assert "line 2: missing required field" in res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)

    res = CliRunner().invoke(check_command, [str(path), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["line"] == 2

    res = CliRunner().invoke(check_command, [str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2
