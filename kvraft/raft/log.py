"""The replica's view of its Raft log: entries since the last snapshot, in memory.

The log keeps every entry after the snapshot in memory (as etcd-io/raft's
MemoryStorage does); compaction bounds it. Durability is tracked, not done here:
``stable`` is the highest index the runtime has confirmed durable, and
``unstable_entries()`` is what it still has to write.

Invariants (checked by ``check_invariants`` in tests and the simulator):

- ``entries[k].index == snapshot_index + 1 + k`` and terms never decrease;
- ``snapshot_index <= applied <= applying <= committed <= last_index()``;
- ``snapshot_index <= stable <= last_index()``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvraft.raft.errors import InvariantViolation
from kvraft.raft.types import Entry


class RaftLog:
    __slots__ = (
        "snapshot_index",
        "snapshot_term",
        "entries",
        "committed",
        "applying",
        "applied",
        "stable",
        "persisting",
    )

    def __init__(
        self,
        *,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = list(entries)
        applied = max(applied, snapshot_index)
        self.committed = applied
        self.applying = applied
        self.applied = applied
        self.stable = self.last_index()
        self.persisting = self.stable
        self.check_invariants()

    # --- queries ---------------------------------------------------------------

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        off = index - self.snapshot_index - 1
        if off < 0 or off >= len(self.entries):
            return None
        return self.entries[off].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is (last_term, last_index) at least as new as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), at least one if any, stopping before ``max_bytes`` is exceeded."""
        if lo < self.first_index() or hi > self.last_index() + 1:
            raise InvariantViolation(f"slice [{lo},{hi}) outside log [{self.first_index()},"
                                     f"{self.last_index()}]")
        base = self.snapshot_index + 1
        out: list[Entry] = []
        size = 0
        for k in range(lo - base, hi - base):
            e = self.entries[k]
            size += e.size_bytes()
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs from ours (0 if none)."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (index', term') with index' <= index and term' <= term.

        Used for fast backtracking: everything above it certainly mismatches a log
        whose entry at ``index`` has ``term``.
        """
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                return index, t
            index -= 1
        if index < self.snapshot_index:
            return index, 0  # compacted: the term is unknown, assume a possible match
        if self.snapshot_term <= term:
            return index, self.snapshot_term
        return max(0, index - 1), 0

    # --- changes ---------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that directly follow the last one (no conflicts)."""
        if entries and entries[0].index != self.last_index() + 1:
            raise InvariantViolation(
                f"append at {entries[0].index} does not follow last {self.last_index()}")
        self.entries.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries; returns the last new index, or None on mismatch."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise InvariantViolation(
                    f"entry {conflict} conflicts with committed entry (commit {self.committed})")
            self._truncate_and_append(entries[conflict - prev_index - 1:])
        self.commit_to(min(commit, last_new))
        return last_new

    def _truncate_and_append(self, entries: Sequence[Entry]) -> None:
        start = entries[0].index
        keep = start - self.snapshot_index - 1
        if keep < 0:
            raise InvariantViolation(f"truncate at {start} below snapshot {self.snapshot_index}")
        del self.entries[keep:]
        self.entries.extend(entries)
        self.stable = min(self.stable, start - 1)
        self.persisting = min(self.persisting, start - 1)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise InvariantViolation(f"commit {index} beyond last {self.last_index()}")
            self.committed = index
            return True
        return False

    # --- hand-off to the runtime ------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed out for persisting; marks them as handed out."""
        start = max(self.stable, self.persisting) + 1
        if start > self.last_index():
            return []
        out = self.entries[start - self.snapshot_index - 1:]
        self.persisting = self.last_index()
        return out

    def stable_to(self, index: int, term: int) -> None:
        """The runtime made entries up to (index, term) durable."""
        if index > self.stable and self.match_term(index, term):
            self.stable = index

    def committed_to_apply(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet handed out for applying; marks them handed out."""
        start = self.applying + 1
        if start > self.committed:
            return []
        out = self.slice(start, self.committed + 1, max_bytes)
        self.applying = out[-1].index
        return out

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot at (index, term)."""
        self.entries = []
        self.snapshot_index = index
        self.snapshot_term = term
        self.committed = self.applying = self.applied = index
        self.stable = self.persisting = index

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (which must be applied and durable)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied or index > self.stable:
            raise InvariantViolation(f"compact {index} beyond applied {self.applied} "
                                     f"or stable {self.stable}")
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index = index
        self.snapshot_term = term

    def check_invariants(self) -> None:
        for k, e in enumerate(self.entries):
            if e.index != self.snapshot_index + 1 + k:
                raise InvariantViolation(f"entry {k} has index {e.index}")
            prev = self.entries[k - 1].term if k else self.snapshot_term
            if e.term < prev:
                raise InvariantViolation(f"term decreases at index {e.index}")
        if not (self.snapshot_index <= self.applied <= self.applying <= self.committed
                <= self.last_index()):
            raise InvariantViolation(
                f"index order broken: snap {self.snapshot_index} applied {self.applied} "
                f"applying {self.applying} commit {self.committed} last {self.last_index()}")
        if not self.snapshot_index <= self.stable <= self.last_index():
            raise InvariantViolation(f"stable {self.stable} out of range")
