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
described at :class:`_Search`.

``fail`` operations are ignored; so are ``unknown`` reads.  An ``unknown``
write may take effect at any instant after its invocation, or never: its
return time is +infinity and the search succeeds once every ``ok`` operation
is linearized.  ``a`` precedes ``b`` in real time iff
``a.complete_ns < b.invoke_ns``; intervals that touch are concurrent.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from kvraft.check.history import Operation, operation_to_json

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

Verdict: TypeAlias = Literal["ok", "violation", "unknown"]

_GET, _PUT, _APPEND, _DELETE = 0, 1, 2, 3
_KIND_CODE: Final[dict[str, int]] = {"get": _GET, "put": _PUT, "append": _APPEND, "delete": _DELETE}
_INF: Final = float("inf")
_NOT_A_READ: Final = object()
_CHECK_EVERY: Final = 4096  # search steps between wall-clock checks
_SHRINK_MAX_CHECKS: Final = 64  # sub-history checks allowed when shrinking a witness

STEP_BUDGET_EXHAUSTED: Final = "step budget exhausted"
TIME_BUDGET_EXHAUSTED: Final = "time budget exhausted"


@dataclass(frozen=True, slots=True)
class Fragment:
    """Evidence that one key's history is not linearizable.

    * ``prefix``: the longest linearizable prefix the search found, in
      linearization order; ``state`` is the key's value after it.
    * ``blocking``: the ``ok`` operation that could not be linearized next,
      whatever was chosen among ``stuck`` (the pending operations at that
      point, ``blocking`` included).
    * ``concurrent``: operations of ``prefix`` overlapping a ``stuck`` one in
      time, i.e. whose order relative to them was a choice.
    * ``witness``: a sub-history, sorted by invocation, that is itself not
      linearizable and whose non-linearizability implies that of the whole
      history: it results only from removals that cannot hide a violation.
    """

    prefix: tuple[Operation, ...]
    state: str | None
    blocking: Operation
    stuck: tuple[Operation, ...]
    concurrent: tuple[Operation, ...]
    witness: tuple[Operation, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (operations as in history files)."""
        out: dict[str, Any] = _jsonable(self)
        return out


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    ``ops``: operations the search considered; ``dropped``: those it ignored
    (``fail`` ops, ``unknown`` reads, ``unknown`` writes no read could have
    observed); ``steps``: search steps used; ``reason``: which budget ran out
    for ``unknown``, else empty; ``fragment``: set iff ``violation``.
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
        out: dict[str, Any] = _jsonable(self)
        return out


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history: ``violation`` if any key has one, else
    ``unknown`` if any key is unknown, else ``ok`` (also when empty).  ``keys``
    has one result per key, sorted by key."""

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
        keys = [k.to_json() for k in self.keys]
        return {"verdict": self.verdict, "elapsed_s": round(self.elapsed_s, 6), "ops": self.ops,
                "steps": self.steps, "keys": keys}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Operation):
        return operation_to_json(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def apply_op(state: str | None, op: Operation) -> str | None:
    """The sequential model: the state after ``op`` (a read leaves it as is)."""
    if op.op == "put":
        return op.value
    if op.op == "append":
        return (state or "") + (op.value or "")
    return None if op.op == "delete" else state


def _end(op: Operation) -> float:
    return _INF if op.outcome == "unknown" or op.complete_ns is None else op.complete_ns


class _Reads:
    """The results of a key's ok reads, indexed to tell which states and
    values some read could show (a write whose effect no read shows never
    helps to explain a read)."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        results = [o.result for o in ops if o.op == "get" and o.outcome == "ok"]
        self.absent = None in results
        self.sorted = sorted({r for r in results if r is not None})
        # a read that is a prefix of another adds no substrings: skip it
        srt = self.sorted
        maximal = [r for j, r in enumerate(srt) if j + 1 == len(srt) or not srt[j + 1].startswith(r)]
        self.joined = "\x00".join(maximal)

    def some_start_with(self, state: str) -> bool:
        """Whether some read's result starts with ``state``."""
        j = bisect.bisect_left(self.sorted, state)
        return j < len(self.sorted) and self.sorted[j].startswith(state)

    def some_contain(self, value: str) -> bool:
        """Whether some read's result may contain ``value`` (never a false no)."""
        return "\x00" in value or value in self.joined

    def shows(self, write: Operation, has_append: bool) -> bool:
        """Whether some read could show the effect of ``write``: until the next
        put/delete, every read after a put of ``v`` starts with ``v``, after an
        append of ``a`` contains ``a``, after a delete is absent or appended."""
        if write.op == "put":
            return self.some_start_with(write.value or "")
        if write.op == "append":
            return self.some_contain(write.value or "")
        return has_append or self.absent


def prepare_key_ops(ops: Sequence[Operation]) -> tuple[list[Operation], int]:
    """The ops of one key the search must consider, sorted by invocation, and
    the number dropped: ``fail`` ops, ``unknown`` reads, and ``unknown``
    writes no read could show (optional, and never needed to explain a read,
    so dropping them changes no verdict)."""
    live = [o for o in ops if o.outcome == "ok" or (o.outcome == "unknown" and o.is_write)]
    reads = _Reads(live)
    has_append = any(o.op == "append" for o in live)
    kept = [o for o in live if o.outcome == "ok" or reads.shows(o, has_append)]
    kept.sort(key=lambda o: (o.invoke_ns, o.id))
    return kept, len(ops) - len(kept)


@dataclass(slots=True)
class _DeadEnd:
    order: list[int]  # op indices, in linearization order
    blocking: int
    pending: list[int]


@dataclass(slots=True)
class _SearchResult:
    verdict: Verdict
    steps: int
    reason: str = ""
    dead_end: _DeadEnd | None = None


class _Mark(enum.Enum):
    POISON = 0


# A state no read of the key can observe, nor any state appends make from it.
# All such states are interchangeable, so they share one cache entry.
_POISON: Final = _Mark.POISON
_State: TypeAlias = "str | None | _Mark"
_Frame: TypeAlias = "tuple[int, _State, int, int, int]"


class _Search:
    """One WGL search over the ops of a single key (sorted by invocation).

    Entries live in parallel arrays: node 0 is the head sentinel, nodes
    ``1..2n`` the call and return entries sorted by (time, call first, op).
    The linearized set is ``low`` (every ok op numbered below is linearized),
    ``rel`` (ok ops from ``low`` up, shifted down) and ``ulin`` (unknown ops).

    Pruning, on top of the cache:

    * forced moves (never branched on, see ``_enter``);
    * a *dead* write leaves a state no read observes (a put of a value no
      read starts with, an append of a value no read contains); such states
      are all the same ``_POISON``;
    * *resets* of read ``r``: puts whose value is a prefix of ``r``'s result
      and, if the result is absent or could be built by appends alone
      (``from_none``), deletes, invoked before ``r`` completes.  Unless the
      state can grow into the result, one must still be unlinearized
      (``resets``: puts and unknown deletes; ``ok_dels``: how many leading
      ``ok_deletes`` qualify).
    """

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.kinds = [_KIND_CODE[o.op] for o in ops]
        self.values = [o.value or "" for o in ops]
        self.results = [o.result for o in ops]
        self.is_ok = [int(o.outcome == "ok") for o in ops]
        counts = [0, 0]
        self.pos = []
        for ok in self.is_ok:
            self.pos.append(counts[ok])
            counts[ok] += 1
        reads = _Reads(ops)
        self.observed = reads.some_start_with
        self.dead = [
            (o.op == "put" and not reads.some_start_with(self.values[i]))
            or (o.op == "append" and not reads.some_contain(self.values[i]))
            for i, o in enumerate(ops)
        ]
        self.put_new: list[_State] = [
            _POISON if self.dead[i] else o.value for i, o in enumerate(ops)
        ]
        self._index_resets(ops)
        self._build_list(ops)
        self.best_depth = -1
        self.dead_end: _DeadEnd | None = None

    def _index_resets(self, ops: Sequence[Operation]) -> None:
        puts: dict[str, list[int]] = {}
        for j, o in enumerate(ops):
            if o.op == "put":
                puts.setdefault(o.value or "", []).append(j)
        lengths = sorted({len(v) for v in puts})
        deletes = [j for j, o in enumerate(ops) if o.op == "delete"]
        self.ok_deletes = [j for j in deletes if self.is_ok[j]]
        ok_delete_times = [ops[j].invoke_ns for j in self.ok_deletes]
        unknown_deletes = [j for j in deletes if not self.is_ok[j]]
        appends = tuple({o.value or "" for o in ops if o.op == "append"})
        self.resets: list[list[int]] = []
        self.ok_dels: list[int] = []
        self.from_none: list[bool] = []
        for o in ops:
            want, end, cands, n_del = o.result, _end(o), [], 0
            fn = o.op == "get" and want is not None and want.startswith(appends)
            if o.op == "get" and (want is None or fn):
                n_del = bisect.bisect_right(ok_delete_times, end)
                cands = [j for j in unknown_deletes if ops[j].invoke_ns <= end]
            if o.op == "get" and want is not None:
                for n in lengths:
                    if n > len(want):
                        break
                    cands += [j for j in puts.get(want[:n], ()) if ops[j].invoke_ns <= end]
            self.resets.append(sorted(cands))
            self.ok_dels.append(n_del)
            self.from_none.append(fn)

    def _build_list(self, ops: Sequence[Operation]) -> None:
        events = sorted(
            [(o.invoke_ns, 0, i) for i, o in enumerate(ops)] + [(_end(o), 1, i) for i, o in enumerate(ops)]
        )
        size = len(events) + 2
        self.nxt = list(range(1, size + 1))
        self.prv = list(range(-1, size - 1))
        self.node_op = [-1] * size
        self.is_call = [False] * size
        self.match = [0] * size
        self.read_of_node: list[object] = [_NOT_A_READ] * size  # what a get's call reads
        self.dead_node = [False] * size
        call_node = [0] * len(ops)
        for node, (_, kind, i) in enumerate(events, start=1):
            self.node_op[node] = i
            if kind == 1:
                self.match[call_node[i]] = node
                continue
            self.is_call[node] = True
            self.dead_node[node] = self.dead[i]
            call_node[i] = node
            if ops[i].op == "get":
                self.read_of_node[node] = ops[i].result

    def run(self, step_budget: int, deadline: float) -> _SearchResult:
        """Search for a linearization in at most ``step_budget`` steps.

        ``ok`` once every ok op is linearized, ``violation`` when the search
        space is exhausted, ``unknown`` when a budget runs out.  (One loop,
        with everything inlined: this is the hot path.)
        """
        nxt, node_op, is_call, kinds, results = self.nxt, self.node_op, self.is_call, self.kinds, self.results
        is_ok, pos, dead, put_new, append = self.is_ok, self.pos, self.dead, self.put_new, self._append
        remaining = sum(is_ok)
        cache: set[tuple[int, int, int, _State]] = set()
        stack: list[_Frame] = []
        state: _State = None
        low = rel = ulin = steps = 0
        next_check = min(step_budget, _CHECK_EVERY)
        node = nxt[0]
        while remaining:
            steps += 1
            if steps >= next_check:
                if steps >= step_budget or time.monotonic() > deadline:
                    why = STEP_BUDGET_EXHAUSTED if steps >= step_budget else TIME_BUDGET_EXHAUSTED
                    return _SearchResult("unknown", steps, why)
                next_check = min(step_budget, steps + _CHECK_EVERY)
            if not is_call[node]:  # a pending op must be linearized before this return
                self._record(stack, node_op[node])
            else:
                i = node_op[node]
                kind = kinds[i]
                new: _State = None
                if kind == _GET:
                    if results[i] != state:
                        node = nxt[node]
                        continue
                    new = state
                elif kind == _APPEND:
                    new = append(state, i)
                else:
                    new = put_new[i]
                nlow, nrel, nulin = low, rel, ulin
                if not is_ok[i]:
                    nulin = ulin | (1 << pos[i])
                elif pos[i] > low:
                    nrel = rel | (1 << (pos[i] - low))
                else:  # keep rel's lowest bit clear: move its run of low ones into low
                    t = (~(rel | 1) & ((rel | 1) + 1)).bit_length() - 1
                    nlow, nrel = low + t, (rel | 1) >> t
                key = (nlow, nrel, nulin, new)
                if key not in cache:
                    cache.add(key)
                    stack.append((node, state, low, rel, ulin))
                    state, low, rel, ulin = new, nlow, nrel, nulin
                    remaining -= is_ok[i]
                    node = self._enter(node, kind != _GET, state, low, rel, ulin)
                    if node > 0:
                        continue
                    self._record(stack, node_op[-node])
                elif not (kind == _GET or (state is _POISON and dead[i])):
                    node = nxt[node]
                    continue
            frame = self._backtrack(stack)
            if frame is None:
                return _SearchResult("violation", steps, dead_end=self.dead_end)
            node, state, low, rel, ulin, back = frame
            remaining += back
            node = nxt[node]
        return _SearchResult("ok", steps)

    def _append(self, state: _State, i: int) -> _State:
        """The state after append ``i``, poisoned if no read could show it."""
        if state is _POISON or self.dead[i]:
            return _POISON
        new = self.values[i] if state is None else state + self.values[i]
        return new if self.observed(new) else _POISON

    def _enter(self, call: int, wrote: bool, state: _State, low: int, rel: int, ulin: int) -> int:
        """Lift entry ``call`` and its return from the list; return the entry to
        try next, or ``-c`` if the pending read at entry ``c`` became impossible.

        Forced moves come first: a pending read matching the state (it changes
        nothing and no pending op must precede it), or, in a poisoned state, a
        pending dead write (the state stays unobservable).  Any solution can be
        reordered to start with either, so neither needs alternatives.
        """
        nxt, prv, is_call, read = self.nxt, self.prv, self.is_call, self.read_of_node
        ret = self.match[call]
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        nxt[prv[ret]] = nxt[ret]
        prv[nxt[ret]] = prv[ret]
        poisoned = state is _POISON
        node = nxt[0]
        while is_call[node]:
            rd = read[node]
            if rd is not _NOT_A_READ:
                if rd == state:
                    return node
                if wrote and not self._viable(self.node_op[node], state, low, rel, ulin):
                    return -node
            elif poisoned and self.dead_node[node]:
                return node
            node = nxt[node]
        return nxt[0]

    def _viable(self, r: int, state: _State, low: int, rel: int, ulin: int) -> bool:
        """Whether read ``r`` can still get its result: appends only extend the
        state, so unless it can grow into the result a reset must remain."""
        want, pos = self.results[r], self.pos
        if state is not _POISON:
            if want is None:
                if state is None:
                    return True
            elif state is None:
                if self.from_none[r]:
                    return True
            elif want.startswith(state):
                return True
        for j in reversed(self.resets[r]):
            p = pos[j]
            if self.is_ok[j]:
                if p >= low and not (rel >> (p - low)) & 1:
                    return True
            elif not (ulin >> p) & 1:
                return True
        for k in range(self.ok_dels[r] - 1, -1, -1):
            p = pos[self.ok_deletes[k]]
            if p < low:  # this and all earlier ok deletes are linearized
                break
            if not (rel >> (p - low)) & 1:
                return True
        return False

    def _backtrack(self, stack: list[_Frame]) -> tuple[int, _State, int, int, int, int] | None:
        """Undo the latest branching move and the forced moves after it.

        Returns the restored frame plus the number of ok ops un-linearized,
        or ``None`` when the stack is exhausted (no linearization exists).
        """
        nxt, prv, match, node_op = self.nxt, self.prv, self.match, self.node_op
        back = 0
        while stack:
            node, state, low, rel, ulin = stack.pop()
            i = node_op[node]
            back += self.is_ok[i]
            ret = match[node]  # unlift: return entry first, then the call
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[node]] = node
            prv[nxt[node]] = node
            if not (self.kinds[i] == _GET or (state is _POISON and self.dead[i])):
                return node, state, low, rel, ulin, back
        return None

    def _record(self, stack: list[_Frame], blocking: int) -> None:
        """Remember the deepest dead end: op ``blocking`` cannot be linearized."""
        if len(stack) <= self.best_depth:
            return
        self.best_depth = len(stack)
        pending = []
        cur = self.nxt[0]
        while self.is_call[cur]:
            pending.append(self.node_op[cur])
            cur = self.nxt[cur]
        order = [self.node_op[entry[0]] for entry in stack]
        self.dead_end = _DeadEnd(order, blocking, pending)


@dataclass(slots=True)
class _Budget:
    steps: int
    deadline: float
    checks: int = _SHRINK_MAX_CHECKS
    used: int = 0


def _search(ops: Sequence[Operation], budget: _Budget) -> _SearchResult:
    result = _Search(ops).run(budget.steps - budget.used, budget.deadline)
    budget.used += result.steps
    return result


def _by_invocation(ops: list[Operation]) -> list[Operation]:
    return sorted(ops, key=lambda o: (o.invoke_ns, o.id))


class _Shrinker:
    """Shrinks a violating history by removals that cannot hide a violation.

    Every accepted candidate was verified to be a violation on its own, so the
    result is a valid witness however early the budget runs out.
    """

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    @property
    def exhausted(self) -> bool:
        b = self.budget
        return b.checks <= 0 or b.used >= b.steps or time.monotonic() > b.deadline

    def violates(self, ops: list[Operation]) -> bool:
        if self.exhausted:
            return False
        self.budget.checks -= 1
        return _search(ops, self.budget).verdict == "violation"

    def shrink(self, ops: list[Operation], blocking: Operation) -> list[Operation]:
        return self.left_cut(self.drop_reads(self.truncate(ops, blocking), blocking))

    def truncate(self, ops: list[Operation], blocking: Operation) -> list[Operation]:
        """Drop ops invoked after ``blocking`` completed, and reads running then
        (dropped writes take effect after every kept read)."""
        t = _end(blocking)
        cand = [o for o in ops if o.invoke_ns <= t and not (o.op == "get" and _end(o) > t)]
        return cand if len(cand) < len(ops) and self.violates(cand) else ops

    def drop_reads(self, ops: list[Operation], blocking: Operation) -> list[Operation]:
        """Remove reads while the violation persists (dropping a read is sound)."""
        writes = [o for o in ops if o.op != "get"]
        gets = [o for o in ops if o.op == "get"]
        if blocking.op == "get" and len(gets) > 1:
            only = _by_invocation(writes + [blocking])
            if self.violates(only):
                return only
        chunk = len(gets) // 2
        while chunk >= 1 and not self.exhausted:
            i = 0
            while i < len(gets) and not self.exhausted:
                trial = gets[:i] + gets[i + chunk:]
                if self.violates(_by_invocation(writes + trial)):
                    gets = trial
                else:
                    i += chunk
            chunk //= 2
        return _by_invocation(writes + gets)

    def left_cut(self, ops: list[Operation]) -> list[Operation]:
        """Drop what precedes an ok put/delete ``P`` if the violation persists.

        Keeps ``P``, the writes not completed before ``P`` was invoked, the
        reads invoked after ``P`` completed and every unknown op.  In any
        linearization of the whole, the dropped writes precede ``P``, which
        overwrites their effect, and no kept read precedes ``P``; dropping
        reads is always sound.  Binary search for the latest such cut.
        """
        cuts = [j for j, o in enumerate(ops) if j and o.outcome == "ok" and o.op in ("put", "delete")]
        lo, hi, best = 0, len(cuts) - 1, ops
        while lo <= hi:
            mid = (lo + hi) // 2
            p = ops[cuts[mid]]
            cand = [
                o for o in ops
                if o is p or o.outcome != "ok"
                or (o.op != "get" and _end(o) >= p.invoke_ns)
                or (o.op == "get" and o.invoke_ns > _end(p))
            ]
            if len(cand) < len(best) and self.violates(cand):
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        return best


def _fragment(ops: list[Operation], dead_end: _DeadEnd, budget: _Budget | None) -> Fragment:
    prefix = tuple(ops[i] for i in dead_end.order)
    state: str | None = None
    for op in prefix:
        state = apply_op(state, op)
    blocking = ops[dead_end.blocking]
    stuck = tuple(ops[i] for i in dead_end.pending)
    concurrent = tuple(
        p for p in prefix if any(p.invoke_ns <= _end(s) and s.invoke_ns <= _end(p) for s in stuck)
    )
    witness = ops if budget is None else _Shrinker(budget).shrink(ops, blocking)
    return Fragment(prefix, state, blocking, stuck, concurrent, tuple(witness))


def _check_key(key: str, ops: Sequence[Operation], step_budget: int, deadline: float,
               shrink_s: float | None, hard_deadline: float) -> KeyResult:
    """Check one key's ops within ``step_budget`` steps and ``deadline``; shrink
    a violation's witness for at most ``shrink_s`` seconds (``None``: not at
    all), never past ``hard_deadline``, with at most ``step_budget`` steps."""
    kept, dropped = prepare_key_ops(ops)
    res = _search(kept, _Budget(step_budget, deadline))
    if res.verdict != "violation" or res.dead_end is None:
        return KeyResult(key, res.verdict, len(kept), dropped, res.steps, res.reason)
    budget = None
    if shrink_s is not None:
        budget = _Budget(step_budget, min(hard_deadline, time.monotonic() + shrink_s))
    frag = _fragment(kept, res.dead_end, budget)
    return KeyResult(key, "violation", len(kept), dropped, res.steps, "", frag)


def overall_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """``violation`` beats ``unknown`` beats ``ok`` (``ok`` for no keys)."""
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
