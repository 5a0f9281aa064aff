"""Witness shrinking for the kvraft linearizability checker.

:class:`Shrinker` turns one key's violating history into a smaller
sub-history that is still not linearizable, using only removals that cannot
hide a violation, so the witness stays valid whatever the budget allows.
"""

from __future__ import annotations

import time

from kvraft.check.history import Operation
from kvraft.check.search import Budget, op_end, run_search

__all__ = ["Shrinker"]


def _by_invocation(ops: list[Operation]) -> list[Operation]:
    return sorted(ops, key=lambda o: (o.invoke_ns, o.id))


class Shrinker:
    """Shrinks a violating history by removals that cannot hide a violation.

    Every accepted candidate was verified to be a violation on its own, so the
    result is a valid witness however early the budget runs out.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    @property
    def exhausted(self) -> bool:
        """Whether the budget's checks, steps or time have run out."""
        b = self.budget
        return b.checks <= 0 or b.used >= b.steps or time.monotonic() > b.deadline

    def violates(self, ops: list[Operation]) -> bool:
        """Whether ``ops`` is verified non-linearizable (``False`` once exhausted)."""
        if self.exhausted:
            return False
        self.budget.checks -= 1
        return run_search(ops, self.budget).verdict == "violation"

    def shrink(self, ops: list[Operation], blocking: Operation) -> list[Operation]:
        """A violating sub-history of ``ops`` (a violation sorted by invocation,
        in which ``blocking`` could not be linearized)."""
        return self.left_cut(self.drop_reads(self.truncate(ops, blocking), blocking))

    def truncate(self, ops: list[Operation], blocking: Operation) -> list[Operation]:
        """Drop ops invoked after ``blocking`` completed, and reads running then
        (dropped writes take effect after every kept read)."""
        t = op_end(blocking)
        cand = [o for o in ops if o.invoke_ns <= t and not (o.op == "get" and op_end(o) > t)]
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
                or (o.op != "get" and op_end(o) >= p.invoke_ns)
                or (o.op == "get" and o.invoke_ns > op_end(p))
            ]
            if len(cand) < len(best) and self.violates(cand):
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        return best
