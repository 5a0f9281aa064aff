"""Recording client operations as a history (JSON lines, see docs/history-format.md).

A :class:`HistoryRecorder` is shared by any number of clients (and threads). Each
operation is recorded at invocation and completion with ``time.monotonic_ns()``;
completed operations are appended to the file as they finish, and operations still
pending at :meth:`close` are written with outcome ``unknown``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import IO, Any

from kvraft.check.history import Operation, operation_to_json


class HistoryRecorder:
    def __init__(self, path: str | Path | None = None, *, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, str, str, str | None, int]] = {}
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else None
        self._keep = keep
        self.operations: list[Operation] = []

    def invoke(self, client: str, op: str, key: str, value: str | None) -> int:
        now = time.monotonic_ns()
        with self._lock:
            oid = next(self._ids)
            self._pending[oid] = (client, op, key, value, now)
        return oid

    def complete(self, oid: int, outcome: str, result: str | None = None) -> None:
        now = time.monotonic_ns()
        with self._lock:
            p = self._pending.pop(oid, None)
            if p is None:
                return
            self._emit(oid, p, outcome, result, now)

    def _emit(self, oid: int, p: tuple[str, str, str, str | None, int], outcome: str,
              result: str | None, now: int | None) -> None:
        client, op, key, value, invoked = p
        if not (op == "get" and outcome == "ok"):
            result = None
        rec: Any = Operation(id=oid, client=client, op=op, key=key, value=value,  # type: ignore[arg-type]
                             result=result, invoke_ns=invoked, complete_ns=now,
                             outcome=outcome)  # type: ignore[arg-type]
        if self._keep:
            self.operations.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(operation_to_json(rec)) + "\n")

    def close(self) -> list[Operation]:
        """Write pending operations as ``unknown``, close the file; returns all operations."""
        with self._lock:
            for oid, p in sorted(self._pending.items()):
                self._emit(oid, p, "unknown", None, None)
            self._pending.clear()
            if self._file is not None:
                self._file.close()
                self._file = None
            return list(self.operations)
