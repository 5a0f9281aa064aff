"""Result types of the kvraft linearizability checker.

:class:`CheckResult` holds one :class:`KeyResult` per key; a key with a
``violation`` verdict carries a :class:`Fragment` as evidence.
:func:`overall_verdict` combines per-key verdicts.  The checker itself is
:mod:`kvraft.check.linearizability`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from kvraft.check.history import Operation, operation_to_json

__all__ = [
    "STEP_BUDGET_EXHAUSTED",
    "TIME_BUDGET_EXHAUSTED",
    "CheckResult",
    "Fragment",
    "KeyResult",
    "Verdict",
    "overall_verdict",
]

Verdict: TypeAlias = Literal["ok", "violation", "unknown"]

# KeyResult.reason when a key's verdict is ``unknown``
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


def overall_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """``violation`` beats ``unknown`` beats ``ok`` (``ok`` for no keys)."""
    if "violation" in verdicts:
        return "violation"
    return "unknown" if "unknown" in verdicts else "ok"
