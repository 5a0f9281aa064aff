"""Client operation histories: the record type and the JSON-lines format.

A history is a sequence of :class:`Operation` records, one per client request,
as observed by the clients of a kvraft cluster. On disk it is stored as JSON
lines (one JSON object per line); ``docs/history-format.md`` is the normative
description of that format and this module implements it exactly:

* required fields: ``id``, ``client``, ``op``, ``key``, ``value``, ``result``,
  ``invoke_ns``, ``complete_ns``, ``outcome``;
* unknown fields are ignored (forward compatibility);
* blank lines are ignored;
* any other deviation raises :class:`HistoryFormatError` naming the 1-based
  line number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, cast

__all__ = [
    "OpKind",
    "Operation",
    "Outcome",
    "HistoryFormatError",
    "dump_history",
    "dumps_history",
    "load_history",
    "loads_history",
    "operation_from_json",
    "operation_to_json",
]

OpKind: TypeAlias = Literal["get", "put", "append", "delete"]
Outcome: TypeAlias = Literal["ok", "fail", "unknown"]

OP_KINDS: Final[frozenset[str]] = frozenset({"get", "put", "append", "delete"})
OUTCOMES: Final[frozenset[str]] = frozenset({"ok", "fail", "unknown"})
_FIELDS: Final[tuple[str, ...]] = (
    "id",
    "client",
    "op",
    "key",
    "value",
    "result",
    "invoke_ns",
    "complete_ns",
    "outcome",
)


class HistoryFormatError(ValueError):
    """A history file (or record) does not follow the JSON-lines format.

    ``line`` is the 1-based line number of the offending record, or ``None``
    when the problem is not tied to one line (e.g. a record built in code).
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        self.reason = message
        super().__init__(message if line is None else f"line {line}: {message}")


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on a single key.

    Invariants (checked on construction, ``ValueError`` otherwise):

    * ``value`` is a ``str`` for ``put``/``append`` and ``None`` for
      ``get``/``delete``;
    * ``result`` is ``None`` unless this is an ``ok`` ``get`` (whose result is
      the string read, or ``None`` when the key was absent);
    * ``complete_ns`` is an ``int`` >= ``invoke_ns`` for ``ok``/``fail``; it may
      be ``None`` only for ``unknown``.

    Times are nanoseconds of one monotonic clock shared by the whole history.
    """

    id: int
    client: str
    op: OpKind
    key: str
    value: str | None
    result: str | None
    invoke_ns: int
    complete_ns: int | None
    outcome: Outcome

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def is_write(self) -> bool:
        """True for ``put``, ``append`` and ``delete``."""
        return self.op != "get"


def _validate(op: Operation) -> None:
    if op.op not in OP_KINDS:
        raise ValueError(f"op must be one of get/put/append/delete, got {op.op!r}")
    if op.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of ok/fail/unknown, got {op.outcome!r}")
    if op.op in ("put", "append"):
        if not isinstance(op.value, str):
            raise ValueError(f"value must be a string for {op.op}")
    elif op.value is not None:
        raise ValueError(f"value must be null for {op.op}")
    if op.result is not None and not (op.op == "get" and op.outcome == "ok"):
        raise ValueError("result must be null unless op is an ok get")
    if op.complete_ns is None:
        if op.outcome != "unknown":
            raise ValueError(f"complete_ns may be null only for outcome unknown, not {op.outcome}")
    elif op.complete_ns < op.invoke_ns:
        raise ValueError("complete_ns must not be before invoke_ns")


def _field(obj: dict[str, Any], name: str, types: tuple[type, ...], nullable: bool) -> Any:
    if name not in obj:
        raise HistoryFormatError(f"missing required field {name!r}")
    value = obj[name]
    if value is None and nullable:
        return None
    # bool is a subclass of int in Python but never a valid integer here.
    if isinstance(value, bool) or not isinstance(value, types):
        expected = "/".join("integer" if t is int else "string" for t in types)
        if nullable:
            expected += " or null"
        raise HistoryFormatError(f"field {name!r} must be {expected}, got {json.dumps(value)}")
    return value


def operation_from_json(obj: object) -> Operation:
    """Build an :class:`Operation` from one decoded JSON object.

    Unknown keys are ignored. Raises :class:`HistoryFormatError` (without a
    line number) on a missing field, a wrongly typed field or a violated
    invariant.
    """
    if not isinstance(obj, dict):
        raise HistoryFormatError(f"expected a JSON object, got {type(obj).__name__}")
    d = cast(dict[str, Any], obj)
    op = _field(d, "op", (str,), False)
    if op not in OP_KINDS:
        raise HistoryFormatError(f"field 'op' must be one of get/put/append/delete, got {op!r}")
    outcome = _field(d, "outcome", (str,), False)
    if outcome not in OUTCOMES:
        raise HistoryFormatError(f"field 'outcome' must be one of ok/fail/unknown, got {outcome!r}")
    try:
        return Operation(
            id=_field(d, "id", (int,), False),
            client=_field(d, "client", (str,), False),
            op=op,
            key=_field(d, "key", (str,), False),
            value=_field(d, "value", (str,), True),
            result=_field(d, "result", (str,), True),
            invoke_ns=_field(d, "invoke_ns", (int,), False),
            complete_ns=_field(d, "complete_ns", (int,), True),
            outcome=outcome,
        )
    except HistoryFormatError:
        raise
    except ValueError as exc:
        raise HistoryFormatError(str(exc)) from None


def operation_to_json(op: Operation) -> dict[str, Any]:
    """The JSON object for ``op``, with the fields in the documented order."""
    return {name: getattr(op, name) for name in _FIELDS}


def loads_history(text: str) -> list[Operation]:
    """Parse a JSON-lines history from a string.

    Returns the operations in file order. Raises :class:`HistoryFormatError`
    with ``line`` set on the first bad line, including a duplicate ``id``.
    """
    ops: list[Operation] = []
    seen: dict[int, int] = {}
    # Split on "\n" only: str.splitlines() would also split inside strings
    # holding characters such as U+2028 or U+0085.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryFormatError(f"invalid JSON: {exc.msg} (column {exc.colno})", lineno) from None
        try:
            op = operation_from_json(obj)
        except HistoryFormatError as exc:
            raise HistoryFormatError(exc.reason, lineno) from None
        if op.id in seen:
            raise HistoryFormatError(f"duplicate id {op.id} (first used on line {seen[op.id]})", lineno)
        seen[op.id] = lineno
        ops.append(op)
    return ops


def load_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a JSON-lines history file (UTF-8).

    Raises :class:`HistoryFormatError` on malformed content (with the line
    number), ``OSError`` if the file cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as exc:
            raise HistoryFormatError(f"file is not valid UTF-8 (byte offset {exc.start})") from None
    return loads_history(text)


def dumps_history(ops: Iterable[Operation]) -> str:
    """Serialise ``ops`` as JSON lines (ASCII, each line newline-terminated)."""
    return "".join(
        json.dumps(operation_to_json(op), separators=(", ", ": ")) + "\n"
        for op in ops
    )


def dump_history(ops: Sequence[Operation], path: str | os.PathLike[str]) -> None:
    """Write ``ops`` to ``path`` as JSON lines (UTF-8), replacing the file."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps_history(ops))
