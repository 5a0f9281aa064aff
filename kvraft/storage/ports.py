"""The port between a Replica and the state machine it runs (data group or controller).

A :class:`MachineStore` is a deterministic state machine together with its durable
storage (``state.db``). Contract:

- ``apply_batch`` applies committed entries, in order, in one transaction together
  with the applied index and term, and returns one result per entry. After any crash
  the store holds exactly the effects of entries ``1..applied()[0]``; it must never
  raise for a command a client could have sent (bad input is a result, not an error).
- The file at ``path`` is what a snapshot copies (SQLite backup API) and what an
  installed snapshot replaces; its ``meta`` table holds ``applied_index`` and
  ``applied_term`` so a snapshot's contents describe themselves.
- Methods are called from one thread at a time (the replica's state thread), except
  where a store documents reader methods safe to call from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from kvraft.raft.types import ConfState, Entry


class MachineStore(Protocol):
    path: Path

    def applied(self) -> tuple[int, int]: ...
    def conf(self) -> ConfState | None: ...
    def set_conf(self, conf: ConfState) -> None: ...
    def apply_batch(self, entries: Sequence[Entry]) -> list[Any]: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


OpenStore = Callable[[Path], MachineStore]
"""Opens (creating if absent) the store whose database file is at the given path."""
