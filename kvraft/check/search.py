"""The per-key search of the kvraft linearizability checker.

:class:`Search` is the Wing & Gong / Lowe (WGL) search with memoisation over
the ops of one key, with the sound pruning rules described in its docstring;
:class:`Reads` indexes the key's read results for that pruning.
:func:`run_search` runs one search within a :class:`Budget`.  The sequential
model, the per-key split and the treatment of ``unknown`` operations are
described in :mod:`kvraft.check.linearizability`.
"""

from __future__ import annotations

import bisect
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from kvraft.check.history import Operation
from kvraft.check.results import STEP_BUDGET_EXHAUSTED, TIME_BUDGET_EXHAUSTED, Verdict

__all__ = [
    "Budget",
    "DeadEnd",
    "Reads",
    "Search",
    "SearchResult",
    "op_end",
    "run_search",
]

_GET, _PUT, _APPEND, _DELETE = 0, 1, 2, 3
_KIND_CODE: Final[dict[str, int]] = {"get": _GET, "put": _PUT, "append": _APPEND, "delete": _DELETE}
_INF: Final = float("inf")
_NOT_A_READ: Final = object()
_CHECK_EVERY: Final = 4096  # search steps between wall-clock checks
_SHRINK_MAX_CHECKS: Final = 64  # sub-history checks allowed when shrinking a witness


def op_end(op: Operation) -> float:
    """When ``op`` completes in real time: +infinity for ``unknown`` ops."""
    return _INF if op.outcome == "unknown" or op.complete_ns is None else op.complete_ns


class Reads:
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


@dataclass(slots=True)
class DeadEnd:
    """The deepest point a failed search reached (indices into its ops)."""

    order: list[int]  # op indices, in linearization order
    blocking: int
    pending: list[int]


@dataclass(slots=True)
class SearchResult:
    """The outcome of one search; ``dead_end`` is set for a ``violation``."""

    verdict: Verdict
    steps: int
    reason: str = ""
    dead_end: DeadEnd | None = None


class _Mark(enum.Enum):
    POISON = 0


# A state no read of the key can observe, nor any state appends make from it.
# All such states are interchangeable, so they share one cache entry.
_POISON: Final = _Mark.POISON
_State: TypeAlias = "str | None | _Mark"
_Frame: TypeAlias = "tuple[int, _State, int, int, int]"


class Search:
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
        reads = Reads(ops)
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
        self.dead_end: DeadEnd | None = None

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
            want, end, cands, n_del = o.result, op_end(o), [], 0
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
            [(o.invoke_ns, 0, i) for i, o in enumerate(ops)] + [(op_end(o), 1, i) for i, o in enumerate(ops)]
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

    def run(self, step_budget: int, deadline: float) -> SearchResult:
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
                    return SearchResult("unknown", steps, why)
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
                return SearchResult("violation", steps, dead_end=self.dead_end)
            node, state, low, rel, ulin, back = frame
            remaining += back
            node = nxt[node]
        return SearchResult("ok", steps)

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
        self.dead_end = DeadEnd(order, blocking, pending)


@dataclass(slots=True)
class Budget:
    """Limits shared by a sequence of searches: ``steps`` in all (``used`` so
    far), a wall-clock ``deadline`` (``time.monotonic``), and ``checks``, the
    searches witness shrinking may still run."""

    steps: int
    deadline: float
    checks: int = _SHRINK_MAX_CHECKS
    used: int = 0


def run_search(ops: Sequence[Operation], budget: Budget) -> SearchResult:
    """Search ``ops`` (one key's, sorted by invocation) with the steps left in
    ``budget``, and charge the steps used to it."""
    result = Search(ops).run(budget.steps - budget.used, budget.deadline)
    budget.used += result.steps
    return result
