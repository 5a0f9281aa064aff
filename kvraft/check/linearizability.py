"""Linearizability checker for kvraft client histories.

The checker decides whether a history of :class:`~kvraft.check.history.Operation`
records is linearizable with respect to the sequential key-value model:

* the state of a key is ``str | None`` (``None``: absent, the initial state);
* ``get`` returns the state; ``put`` sets it; ``append`` sets it to
  ``(state or "") + value``; ``delete`` sets it to ``None``.

Every operation touches one key, so the history is split per key and each key
is checked on its own (P-compositionality of linearizability).  Each key is
checked with the Wing & Gong / Lowe (WGL) search with memoisation, as in
Lowe's "Testing for linearizability" and the porcupine checker: a doubly
linked list of call/return entries ordered by time, a stack of linearised
calls, and a cache of visited (linearised-set, model-state) pairs.

Outcomes: ``fail`` operations are ignored (they were not applied).  An
``unknown`` ``get`` is ignored (it has no effect).  An ``unknown`` write may
take effect at any instant after its invocation, or never: its return time is
+infinity and the search succeeds once every ``ok`` operation is linearised.

Real-time order: ``a`` precedes ``b`` iff ``a.complete_ns < b.invoke_ns``;
operations whose intervals touch (equal times) are concurrent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from kvraft.check.history import Operation, operation_to_json

__all__ = [
    "CheckResult",
    "Fragment",
    "KeyResult",
    "Verdict",
    "check_history",
    "check_key",
]

Verdict: TypeAlias = Literal["ok", "violation", "unknown"]

_GET: Final = 0
_PUT: Final = 1
_APPEND: Final = 2
_DELETE: Final = 3
_KIND_CODE: Final[dict[str, int]] = {"get": _GET, "put": _PUT, "append": _APPEND, "delete": _DELETE}
_INF: Final = float("inf")
_CHECK_EVERY: Final = 4096  # steps between wall-clock checks
_SHRINK_MAX_CHECKS: Final = 64

STEP_BUDGET_EXHAUSTED: Final = "step budget exhausted"
TIME_BUDGET_EXHAUSTED: Final = "time budget exhausted"


@dataclass(frozen=True, slots=True)
class Fragment:
    """Evidence that one key's history is not linearizable.

    * ``prefix``: the longest linearizable prefix the search found, in
      linearization order; ``state`` is the key's value after it.
    * ``blocking``: the ``ok`` operation that had to be linearized next (its
      completion precedes the invocation of every remaining operation) but
      could not be, whatever was chosen among ``stuck``.
    * ``stuck``: the operations that were candidates at that point (invoked,
      not yet linearized; includes ``blocking``); none leads to a full
      linearization.
    * ``concurrent``: operations of ``prefix`` that overlap in time with a
      ``stuck`` operation, i.e. whose order relative to them was a choice.
    * ``witness``: a sub-history that is by itself not linearizable and whose
      non-linearizability implies that of the whole history (it is obtained
      only by removals that cannot hide a violation: reads, operations
      invoked after the violation, and everything before a write that no
      other operation overlaps).  Sorted by invocation time.
    """

    prefix: tuple[Operation, ...]
    state: str | None
    blocking: Operation
    stuck: tuple[Operation, ...]
    concurrent: tuple[Operation, ...]
    witness: tuple[Operation, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (operations in history-file form)."""
        return {
            "prefix_len": len(self.prefix),
            "prefix": [operation_to_json(o) for o in self.prefix],
            "state": self.state,
            "blocking": operation_to_json(self.blocking),
            "stuck": [operation_to_json(o) for o in self.stuck],
            "concurrent": [operation_to_json(o) for o in self.concurrent],
            "witness": [operation_to_json(o) for o in self.witness],
        }


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    ``ops`` counts the operations the search considered; ``dropped`` those it
    ignored (``fail`` operations, ``unknown`` reads, and ``unknown`` writes
    whose effect no read could have observed).  ``steps`` is the number of
    search steps used.  ``reason`` explains an ``unknown`` verdict (which
    budget ran out) and is empty otherwise.  ``fragment`` is set exactly when
    the verdict is ``violation``.
    """

    key: str
    verdict: Verdict
    ops: int
    dropped: int
    steps: int
    reason: str = ""
    fragment: Fragment | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "key": self.key,
            "verdict": self.verdict,
            "ops": self.ops,
            "dropped": self.dropped,
            "steps": self.steps,
            "reason": self.reason,
            "fragment": None if self.fragment is None else self.fragment.to_json(),
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history.

    ``verdict`` is ``violation`` if any key has a violation, else ``unknown``
    if any key is unknown, else ``ok`` (also for an empty history).  ``keys``
    holds one result per key, sorted by key.
    """

    verdict: Verdict
    keys: tuple[KeyResult, ...]
    elapsed_s: float

    @property
    def ops(self) -> int:
        """Total operations considered over all keys."""
        return sum(k.ops for k in self.keys)

    @property
    def steps(self) -> int:
        """Total search steps over all keys."""
        return sum(k.steps for k in self.keys)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "verdict": self.verdict,
            "elapsed_s": round(self.elapsed_s, 6),
            "ops": self.ops,
            "steps": self.steps,
            "keys": [k.to_json() for k in self.keys],
        }


@dataclass(slots=True)
class _DeadEnd:
    order: list[int]  # op indices, in linearization order
    state: str | None
    blocking: int
    pending: list[int]


@dataclass(slots=True)
class _SearchResult:
    verdict: Verdict
    steps: int
    reason: str = ""
    dead_end: _DeadEnd | None = None


@dataclass(slots=True)
class _Budget:
    steps: int
    deadline: float
    checks: int = _SHRINK_MAX_CHECKS
    used: int = field(default=0)


class _Search:
    """One WGL search over the ops of a single key (sorted by invocation).

    The entry list lives in parallel arrays: node 0 is the head sentinel,
    node ``2n + 1`` the tail sentinel, nodes in between are the call and
    return entries sorted by (time, call-before-return, op index).
    """

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.ops = ops
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(ops):
            events.append((op.invoke_ns, 0, i))
            ret = _INF if op.outcome == "unknown" or op.complete_ns is None else op.complete_ns
            events.append((ret, 1, i))
        events.sort()
        size = len(events) + 2
        self.nxt = list(range(1, size + 1))
        self.prv = list(range(-1, size - 1))
        self.node_op = [-1] * size
        self.is_call = [False] * size
        self.match = [0] * size
        call_node = [0] * len(ops)
        for node, (_, kind, i) in enumerate(events, start=1):
            self.node_op[node] = i
            if kind == 0:
                self.is_call[node] = True
                call_node[i] = node
            else:
                self.match[call_node[i]] = node
        self.best_depth = -1
        self.dead_end: _DeadEnd | None = None

    def _record(self, stack: list[tuple[int, str | None, int, int, int]], node: int,
                state: str | None) -> None:
        """Remember the deepest dead end (return entry reached with ``stack``)."""
        if len(stack) <= self.best_depth:
            return
        self.best_depth = len(stack)
        pending = []
        cur = self.nxt[0]
        while cur != node:
            if self.is_call[cur]:
                pending.append(self.node_op[cur])
            cur = self.nxt[cur]
        order = [self.node_op[entry[0]] for entry in stack]
        self.dead_end = _DeadEnd(order, state, self.node_op[node], pending)

    def run(self, step_budget: int, deadline: float) -> _SearchResult:
        """Search for a linearization; never exceeds ``step_budget`` steps.

        Returns ``ok`` once all ``ok`` ops are linearized, ``violation`` when
        the search space is exhausted, ``unknown`` when a budget runs out.
        """
        ops, nxt, prv = self.ops, self.nxt, self.prv
        node_op, is_call, match = self.node_op, self.is_call, self.match
        kinds = [_KIND_CODE[o.op] for o in ops]
        values = [o.value or "" for o in ops]
        results = [o.result for o in ops]
        is_ok = [o.outcome == "ok" for o in ops]
        pos = _bit_positions(is_ok)
        remaining = sum(is_ok)
        if remaining == 0:
            return _SearchResult("ok", 0)
        cache: set[tuple[int, int, int, str | None]] = set()
        stack: list[tuple[int, str | None, int, int, int]] = []
        state: str | None = None
        low = rel = ulin = steps = 0
        next_check = min(step_budget, _CHECK_EVERY)
        node = nxt[0]
        while True:
            steps += 1
            if steps >= next_check:
                if steps >= step_budget:
                    return _SearchResult("unknown", steps, STEP_BUDGET_EXHAUSTED)
                if time.monotonic() > deadline:
                    return _SearchResult("unknown", steps, TIME_BUDGET_EXHAUSTED)
                next_check = min(step_budget, steps + _CHECK_EVERY)
            if is_call[node]:
                i = node_op[node]
                kind = kinds[i]
                if kind == _GET:
                    if results[i] != state:
                        node = nxt[node]
                        continue
                    new = state
                elif kind == _PUT:
                    new = values[i]
                elif kind == _APPEND:
                    new = values[i] if state is None else state + values[i]
                else:
                    new = None
                nlow, nrel, nulin = low, rel, ulin
                if is_ok[i]:
                    shift = pos[i] - low
                    nrel = rel | (1 << shift)
                    if shift == 0:  # keep rel free of its run of low ones
                        t = (~nrel & (nrel + 1)).bit_length() - 1
                        nrel >>= t
                        nlow += t
                else:
                    nulin = ulin | (1 << pos[i])
                key = (nlow, nrel, nulin, new)
                if key in cache:
                    node = nxt[node]
                    continue
                cache.add(key)
                stack.append((node, state, low, rel, ulin))
                state, low, rel, ulin = new, nlow, nrel, nulin
                # lift the call entry, then its return entry
                ret = match[node]
                nxt[prv[node]] = nxt[node]
                prv[nxt[node]] = prv[node]
                nxt[prv[ret]] = nxt[ret]
                prv[nxt[ret]] = prv[ret]
                if is_ok[i]:
                    remaining -= 1
                    if remaining == 0:
                        return _SearchResult("ok", steps)
                node = nxt[0]
            else:
                self._record(stack, node, state)
                if not stack:
                    return _SearchResult("violation", steps, dead_end=self.dead_end)
                node, state, low, rel, ulin = stack.pop()
                if is_ok[node_op[node]]:
                    remaining += 1
                # unlift in reverse order: return entry first, then the call
                ret = match[node]
                nxt[prv[ret]] = ret
                prv[nxt[ret]] = ret
                nxt[prv[node]] = node
                prv[nxt[node]] = node
                node = nxt[node]


def _bit_positions(is_ok: list[bool]) -> list[int]:
    """Bit index of each op: ok ops and unknown ops are numbered separately."""
    counts = [0, 0]
    pos = []
    for ok in is_ok:
        pos.append(counts[ok])
        counts[ok] += 1
    return pos


def _search(ops: Sequence[Operation], budget: _Budget) -> _SearchResult:
    result = _Search(ops).run(budget.steps - budget.used, budget.deadline)
    budget.used += result.steps
    return result


def _observable(write: Operation, gets: Sequence[Operation], has_append: bool) -> bool:
    """Whether some read could observe the effect of an ``unknown`` write.

    A read can only observe a write linearized before it, so reads completed
    before the write's invocation are ignored.  After a put of ``v`` every
    read up to the next put/delete starts with ``v``; after an append of
    ``a`` it contains ``a``; after a delete it is ``None`` or built from
    later appends.  A write no read can observe may be dropped: it never
    helps to explain a read.
    """
    later = [g.result for g in gets if g.complete_ns is None or g.complete_ns >= write.invoke_ns]
    if write.op == "put":
        v = write.value or ""
        return any(r is not None and r.startswith(v) for r in later)
    if write.op == "append":
        a = write.value or ""
        return any(r is not None and a in r for r in later)
    return has_append or any(r is None for r in later)


def prepare_key_ops(ops: Sequence[Operation]) -> tuple[list[Operation], int]:
    """The ops of one key that the search must consider, sorted by invocation.

    Drops ``fail`` ops, ``unknown`` reads and unobservable ``unknown`` writes;
    returns ``(kept, number_dropped)``.
    """
    live = [o for o in ops if o.outcome == "ok" or (o.outcome == "unknown" and o.is_write)]
    gets = [o for o in live if o.op == "get"]
    has_append = any(o.op == "append" for o in live)
    kept = [
        o for o in live
        if o.outcome == "ok" or _observable(o, gets, has_append)
    ]
    kept.sort(key=lambda o: (o.invoke_ns, o.id))
    return kept, len(ops) - len(kept)


def _end(op: Operation) -> float:
    return _INF if op.outcome == "unknown" or op.complete_ns is None else op.complete_ns


def _overlaps(a: Operation, b: Operation) -> bool:
    return a.invoke_ns <= _end(b) and b.invoke_ns <= _end(a)


def _violates(ops: Sequence[Operation], budget: _Budget) -> bool:
    if budget.checks <= 0 or budget.used >= budget.steps:
        return False
    budget.checks -= 1
    return _search(ops, budget).verdict == "violation"


def _truncate(ops: list[Operation], blocking: Operation, ok: Callable[[list[Operation]], bool]
              ) -> list[Operation]:
    """Drop ops invoked after ``blocking`` completed, and reads still running then."""
    t = _end(blocking)
    cand = [o for o in ops if o.invoke_ns <= t and not (o.op == "get" and _end(o) > t)]
    return cand if len(cand) < len(ops) and ok(cand) else ops


def _drop_reads(ops: list[Operation], blocking: Operation, ok: Callable[[list[Operation]], bool]
                ) -> list[Operation]:
    """Remove reads while the violation persists (removing reads is sound)."""
    writes = [o for o in ops if o.op != "get"]
    gets = [o for o in ops if o.op == "get"]
    if blocking.op == "get" and len(gets) > 1:
        only = sorted(writes + [blocking], key=lambda o: (o.invoke_ns, o.id))
        if ok(only):
            return only
    chunk = len(gets) // 2
    while chunk >= 1:
        i = 0
        while i < len(gets):
            trial = gets[:i] + gets[i + chunk:]
            if ok(sorted(writes + trial, key=lambda o: (o.invoke_ns, o.id))):
                gets = trial
            else:
                i += chunk
        chunk //= 2
    return sorted(writes + gets, key=lambda o: (o.invoke_ns, o.id))


def _left_cut(ops: list[Operation], ok: Callable[[list[Operation]], bool]) -> list[Operation]:
    """Drop everything before an isolated put/delete, if the violation persists.

    A put or delete that overlaps no other op splits the history: all ops
    before it are linearized before it and its effect does not depend on
    them, so if the part from it onwards is not linearizable, neither is the
    whole.  Binary search for the latest such cut that keeps the violation.
    """
    cuts: list[int] = []
    max_end = -_INF
    for j, op in enumerate(ops):
        isolated_before = max_end < op.invoke_ns
        max_end = max(max_end, _end(op))
        if not isolated_before or op.outcome != "ok" or op.op not in ("put", "delete"):
            continue
        if j + 1 == len(ops) or ops[j + 1].invoke_ns > _end(op):
            cuts.append(j)
    lo, hi, best = 0, len(cuts) - 1, ops
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = ops[cuts[mid]:]
        if cuts[mid] > 0 and ok(cand):
            best, lo = cand, mid + 1
        else:
            hi = mid - 1
    return best


def _witness(ops: list[Operation], blocking: Operation, budget: _Budget) -> list[Operation]:
    """A small sub-history whose non-linearizability implies the whole one's."""

    def ok(cand: list[Operation]) -> bool:
        return _violates(cand, budget)

    cur = _truncate(ops, blocking, ok)
    cur = _drop_reads(cur, blocking, ok)
    return _left_cut(cur, ok)


def _fragment(ops: list[Operation], dead_end: _DeadEnd, budget: _Budget | None) -> Fragment:
    prefix = tuple(ops[i] for i in dead_end.order)
    blocking = ops[dead_end.blocking]
    stuck = tuple(ops[i] for i in dead_end.pending)
    concurrent = tuple(p for p in prefix if any(_overlaps(p, s) for s in stuck))
    witness = ops if budget is None else _witness(ops, blocking, budget)
    return Fragment(prefix, dead_end.state, blocking, stuck, concurrent, tuple(witness))


def check_key(
    key: str,
    ops: Sequence[Operation],
    *,
    step_budget: int = 5_000_000,
    deadline: float | None = None,
    shrink_deadline: float | None = None,
    shrink: bool = True,
) -> KeyResult:
    """Check the operations of one key (all of ``ops`` must be on ``key``).

    ``deadline`` is a ``time.monotonic()`` instant after which the search
    stops with ``unknown``; ``step_budget`` bounds the search steps.  For a
    violation, the witness is shrunk until ``shrink_deadline`` (default:
    ``deadline``) with at most ``step_budget`` further steps.
    """
    if any(o.key != key for o in ops):
        raise ValueError(f"check_key({key!r}) given an operation on another key")
    deadline = _INF if deadline is None else deadline
    kept, dropped = prepare_key_ops(ops)
    res = _search(kept, _Budget(step_budget, deadline))
    if res.verdict != "violation" or res.dead_end is None:
        return KeyResult(key, res.verdict, len(kept), dropped, res.steps, res.reason)
    sd = deadline if shrink_deadline is None else shrink_deadline
    budget = _Budget(step_budget, sd) if shrink else None
    frag = _fragment(kept, res.dead_end, budget)
    return KeyResult(key, "violation", len(kept), dropped, res.steps, "", frag)


def overall_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """``violation`` > ``unknown`` > ``ok`` (``ok`` for no keys)."""
    if "violation" in verdicts:
        return "violation"
    return "unknown" if "unknown" in verdicts else "ok"


def check_history(
    ops: Sequence[Operation],
    *,
    time_budget_s: float = 60.0,
    step_budget: int = 5_000_000,
    shrink: bool = True,
) -> CheckResult:
    """Check a whole history for linearizability, key by key.

    ``step_budget`` applies to each key; ``time_budget_s`` to the whole call.
    Keys are checked smallest first, each with an equal share of the time
    left; keys that ran out of time are then retried with all the time left.
    A key whose budget runs out gets verdict ``unknown``; the call returns
    after roughly ``time_budget_s`` at most.  When ``shrink`` is true, a
    violation's witness is shrunk with at most a tenth of the time budget.
    """
    start = time.monotonic()
    deadline = start + time_budget_s
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    order = sorted(by_key, key=lambda k: (len(by_key[k]), k))
    results: dict[str, KeyResult] = {}

    def run(key: str, key_deadline: float) -> KeyResult:
        now = time.monotonic()
        shrink_deadline = min(deadline, now + max(time_budget_s / 10, key_deadline - now))
        return check_key(key, by_key[key], step_budget=step_budget, deadline=key_deadline,
                         shrink_deadline=shrink_deadline, shrink=shrink)

    for idx, key in enumerate(order):
        now = time.monotonic()
        results[key] = run(key, now + max(0.0, deadline - now) / (len(order) - idx))
    for key in order:
        if results[key].reason == TIME_BUDGET_EXHAUSTED and time.monotonic() < deadline:
            results[key] = run(key, deadline)
    keys = tuple(results[k] for k in sorted(results))
    verdict = overall_verdict([k.verdict for k in keys])
    return CheckResult(verdict, keys, time.monotonic() - start)
