"""Per-follower replication progress, as tracked by a leader.

States (etcd-io/raft ``tracker/progress.go``):

- PROBE: the leader does not know where the follower's log matches; it sends one
  append at a time and waits for the answer (or the next heartbeat) before the next.
- REPLICATE: the follower is known to match up to ``match``; the leader streams
  entries optimistically (``next`` runs ahead of ``match``) up to a bounded window.
- SNAPSHOT: the follower needs a snapshot; nothing is sent until it is reported.

Invariant: ``match < next``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(slots=True)
class Inflights:
    """A bounded window of appends sent but not yet acknowledged.

    Each element is (last index in the message, message bytes). The window is full
    when it holds ``max_count`` messages or ``max_bytes`` bytes.
    """

    max_count: int
    max_bytes: int
    _items: deque[tuple[int, int]] = field(default_factory=deque)
    _bytes: int = 0

    def add(self, last_index: int, size_bytes: int) -> None:
        self._items.append((last_index, size_bytes))
        self._bytes += size_bytes

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is <= ``index`` (acknowledged)."""
        items = self._items
        while items and items[0][0] <= index:
            self._bytes -= items.popleft()[1]

    def free_first_one(self) -> None:
        """Forget the oldest message (used to unblock a window whose messages were lost)."""
        if self._items:
            self.free_le(self._items[0][0])

    def reset(self) -> None:
        self._items.clear()
        self._bytes = 0

    def full(self) -> bool:
        return len(self._items) >= self.max_count or self._bytes >= self.max_bytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    heard_at: int = 0
    """The leader's tick count when this peer last answered (for reconfiguration checks)."""
    pending_snapshot: int = 0
    read_ack: int = 0
    """Highest read sequence this follower has acknowledged in the current term."""

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement of ``index``; True if ``match`` advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejected append at ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
