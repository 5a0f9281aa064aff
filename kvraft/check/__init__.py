"""History recording format and linearizability checking for kvraft.

Public API:

* :class:`Operation`, :func:`load_history`, :func:`dump_history` (and the
  string variants) for the JSON-lines history format;
* :func:`check_history`, returning a :class:`CheckResult` with per-key
  :class:`KeyResult` entries and, for violations, a :class:`Fragment`;
  :func:`apply_op` is the sequential model it checks against.

The ``kvraft check`` command lives in :mod:`kvraft.check.command`.
"""

from kvraft.check.history import (
    HistoryFormatError,
    Operation,
    OpKind,
    Outcome,
    dump_history,
    dumps_history,
    load_history,
    loads_history,
    operation_from_json,
    operation_to_json,
)
from kvraft.check.linearizability import (
    CheckResult,
    Fragment,
    KeyResult,
    Verdict,
    apply_op,
    check_history,
    overall_verdict,
    prepare_key_ops,
)

__all__ = [
    "CheckResult",
    "Fragment",
    "HistoryFormatError",
    "KeyResult",
    "OpKind",
    "Operation",
    "Outcome",
    "Verdict",
    "apply_op",
    "check_history",
    "dump_history",
    "dumps_history",
    "load_history",
    "loads_history",
    "operation_from_json",
    "operation_to_json",
    "overall_verdict",
    "prepare_key_ops",
]
