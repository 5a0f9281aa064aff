"""Linearizability checker for kvraft client histories.

Sequential model, per key: the state is ``str | None`` (``None``: absent, the
initial state); ``get`` returns it, ``put`` sets it, ``append`` sets it to
``(state or "") + value`` and ``delete`` sets it to ``None``.

Every operation touches one key, so the history is split per key and each key
is checked on its own (P-compositionality).  A key is checked with the
Wing & Gong / Lowe (WGL) search with memoisation, as in Lowe's "Testing for
linearizability" and the porcupine checker: a doubly linked list of
call/return entries ordered by time, a stack of linearized calls, and a cache
of visited (linearized set, state) configurations; plus sound pruning rules
described at :class:`kvraft.check.search.Search`.  A violation's witness is
shrunk by :class:`kvraft.check.shrink.Shrinker`.

``fail`` operations are ignored; so are ``unknown`` reads.  An ``unknown``
write may take effect at any instant after its invocation, or never: its
return time is +infinity and the search succeeds once every ``ok`` operation
is linearized.  ``a`` precedes ``b`` in real time iff
``a.complete_ns < b.invoke_ns``; intervals that touch are concurrent.

This module is the entry point (:func:`check_history`); the result types
live in :mod:`kvraft.check.results` and are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kvraft.check.history import Operation
from kvraft.check.results import STEP_BUDGET_EXHAUSTED as STEP_BUDGET_EXHAUSTED
from kvraft.check.results import TIME_BUDGET_EXHAUSTED as TIME_BUDGET_EXHAUSTED
from kvraft.check.results import CheckResult, Fragment, KeyResult, Verdict, overall_verdict
from kvraft.check.search import Budget, DeadEnd, Reads, op_end, run_search
from kvraft.check.shrink import Shrinker

__all__ = [
    "CheckResult",
    "Fragment",
    "KeyResult",
    "Verdict",
    "apply_op",
    "check_history",
    "overall_verdict",
    "prepare_key_ops",
]


def apply_op(state: str | None, op: Operation) -> str | None:
    """The sequential model: the state after ``op`` (a read leaves it as is)."""
    if op.op == "put":
        return op.value
    if op.op == "append":
        return (state or "") + (op.value or "")
    return None if op.op == "delete" else state


def prepare_key_ops(ops: Sequence[Operation]) -> tuple[list[Operation], int]:
    """The ops of one key the search must consider, sorted by invocation, and
    the number dropped: ``fail`` ops, ``unknown`` reads, and ``unknown``
    writes no read could show (optional, and never needed to explain a read,
    so dropping them changes no verdict)."""
    live = [o for o in ops if o.outcome == "ok" or (o.outcome == "unknown" and o.is_write)]
    reads = Reads(live)
    has_append = any(o.op == "append" for o in live)
    kept = [o for o in live if o.outcome == "ok" or reads.shows(o, has_append)]
    kept.sort(key=lambda o: (o.invoke_ns, o.id))
    return kept, len(ops) - len(kept)


def _fragment(ops: list[Operation], dead_end: DeadEnd, budget: Budget | None) -> Fragment:
    prefix = tuple(ops[i] for i in dead_end.order)
    state: str | None = None
    for op in prefix:
        state = apply_op(state, op)
    blocking = ops[dead_end.blocking]
    stuck = tuple(ops[i] for i in dead_end.pending)
    concurrent = tuple(
        p for p in prefix
        if any(p.invoke_ns <= op_end(s) and s.invoke_ns <= op_end(p) for s in stuck)
    )
    witness = ops if budget is None else Shrinker(budget).shrink(ops, blocking)
    return Fragment(prefix, state, blocking, stuck, concurrent, tuple(witness))


def _check_key(key: str, ops: Sequence[Operation], step_budget: int, deadline: float,
               shrink_s: float | None, hard_deadline: float) -> KeyResult:
    """Check one key's ops within ``step_budget`` steps and ``deadline``; shrink
    a violation's witness for at most ``shrink_s`` seconds (``None``: not at
    all), never past ``hard_deadline``, with at most ``step_budget`` steps."""
    kept, dropped = prepare_key_ops(ops)
    res = run_search(kept, Budget(step_budget, deadline))
    if res.verdict != "violation" or res.dead_end is None:
        return KeyResult(key, res.verdict, len(kept), dropped, res.steps, res.reason)
    budget = None
    if shrink_s is not None:
        budget = Budget(step_budget, min(hard_deadline, time.monotonic() + shrink_s))
    frag = _fragment(kept, res.dead_end, budget)
    return KeyResult(key, "violation", len(kept), dropped, res.steps, "", frag)


def check_history(
    ops: Sequence[Operation],
    *,
    time_budget_s: float = 60.0,
    step_budget: int = 5_000_000,
    shrink: bool = True,
) -> CheckResult:
    """Check a whole history for linearizability, key by key.

    ``step_budget`` applies to each key, ``time_budget_s`` to the whole call,
    which returns after about ``time_budget_s`` at most.  Keys are checked
    smallest first, each with an equal share of the time left; keys that ran
    out of time are then retried with all the time left.  A key whose budget
    runs out is ``unknown``.  With ``shrink``, each violation's witness is
    shrunk for at most a tenth of ``time_budget_s`` (never past the overall
    deadline); without, the witness is all the key's considered operations.
    """
    start = time.monotonic()
    deadline = start + time_budget_s
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    order = sorted(by_key, key=lambda k: (len(by_key[k]), k))
    results: dict[str, KeyResult] = {}
    shrink_s = time_budget_s / 10 if shrink else None

    def run(key: str, key_deadline: float) -> KeyResult:
        return _check_key(key, by_key[key], step_budget, key_deadline, shrink_s, deadline)

    for idx, key in enumerate(order):
        now = time.monotonic()
        results[key] = run(key, now + max(0.0, deadline - now) / (len(order) - idx))
    for key in order:
        if results[key].reason == TIME_BUDGET_EXHAUSTED and time.monotonic() < deadline:
            results[key] = run(key, deadline)
    keys = tuple(results[k] for k in sorted(results))
    return CheckResult(overall_verdict([k.verdict for k in keys]), keys, time.monotonic() - start)
