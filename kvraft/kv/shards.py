"""Which key ranges a data group serves, pulls, sends and deletes (SHARDING.md).

:class:`ShardState` is part of a data group's replicated state: it changes only when
the state machine applies a shard command from the log, so every replica holds the
same one, and it is saved in state.db (and so in snapshots) with the data it covers.

The rules it enforces:

- Configurations are taken one at a time, in order: ``advance`` accepts only
  ``num + 1``, and only when every range gained at ``num`` is installed (rule 1).
- A range gained at N from another group is ``pulling`` until its data and sessions
  are installed through the log; it is served only after that (rules 4, 6).
- A range lost at N becomes an :class:`Outgoing` record: frozen (never served again),
  handed to whoever pulls it for configuration N, and deleted only after the new
  owner confirmed the install (rule 7). Handing out never waits on pulling in, so two
  groups that swap ranges do not deadlock.
- A range that comes back before its old copy was deleted replaces that copy: the
  stale interval is cleared and the outgoing record clipped, so a late delete can
  never remove data the group owns again. It may come back only once the group it
  went to confirmed the install (the record is in ``gc``): before that, that group may
  still need to pull it from here.

Intervals are ``(start, end)`` with ``end=None`` unbounded, in the byte order of the
keys' UTF-8 encoding (which Python's ``str`` order matches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvraft.ctrler.config import Configuration, Range, initial_configuration

Interval = tuple[str, str | None]

KEYS = 0
SESSIONS = 1


class ShardError(ValueError):
    """A shard command that cannot apply now (stale, out of order, or malformed)."""


def _end_lt(a: str | None, b: str | None) -> bool:
    """a < b for exclusive ends, where None is +infinity."""
    if a is None:
        return False
    return b is None or a < b


def _min_end(a: str | None, b: str | None) -> str | None:
    return b if _end_lt(b, a) else a


def intersect(a: Interval, b: Interval) -> Interval | None:
    start = max(a[0], b[0])
    end = _min_end(a[1], b[1])
    if end is not None and end <= start:
        return None
    return (start, end)


def subtract(a: Interval, b: Interval) -> list[Interval]:
    """The parts of ``a`` outside ``b`` (zero, one or two intervals)."""
    if intersect(a, b) is None:
        return [a]
    out: list[Interval] = []
    if a[0] < b[0]:
        out.append((a[0], b[0]))
    if b[1] is not None and _end_lt(b[1], a[1]):
        out.append((b[1], a[1]))
    return out


def covers(outer: Interval, inner: Interval) -> bool:
    return outer[0] <= inner[0] and not _end_lt(outer[1], inner[1])


def in_interval(key: str, iv: Interval) -> bool:
    return iv[0] <= key and (iv[1] is None or key < iv[1])


@dataclass(slots=True)
class Pull:
    """Part of a gained range still to be copied from its previous owner."""

    range_id: int
    start: str
    end: str | None
    src_gid: int
    phase: int = KEYS
    cursor: str | None = None
    """The last key (phase KEYS) or client id (phase SESSIONS) installed so far."""
    chunks: int = 0
    keys: int = 0

    @property
    def interval(self) -> Interval:
        return (self.start, self.end)

    def to_list(self) -> list[Any]:
        return [self.range_id, self.start, self.end, self.src_gid, self.phase, self.cursor,
                self.chunks, self.keys]

    @staticmethod
    def from_list(raw: list[Any]) -> Pull:
        rid, start, end, src, phase, cursor, chunks, keys = raw
        return Pull(int(rid), str(start), None if end is None else str(end), int(src),
                    int(phase), None if cursor is None else str(cursor), int(chunks), int(keys))


@dataclass(slots=True)
class Outgoing:
    """A frozen interval lost at configuration ``num`` to ``to_gid``, kept until GC."""

    num: int
    start: str
    end: str | None
    to_gid: int
    gc: bool = False
    """True once the new owner confirmed and deletion has begun."""
    deleted: int = 0

    @property
    def interval(self) -> Interval:
        return (self.start, self.end)

    def to_list(self) -> list[Any]:
        return [self.num, self.start, self.end, self.to_gid, self.gc, self.deleted]

    @staticmethod
    def from_list(raw: list[Any]) -> Outgoing:
        num, start, end, to, gc, deleted = raw
        return Outgoing(int(num), str(start), None if end is None else str(end), int(to),
                        bool(gc), int(deleted))


@dataclass(slots=True)
class Advance:
    """What the state machine must do to the data when a configuration is taken."""

    clear: list[Interval] = field(default_factory=list)
    """Stale copies of intervals gained again: delete their keys before pulling."""


@dataclass(slots=True)
class ShardState:
    gid: int
    config: Configuration = field(default_factory=initial_configuration)
    pulls: list[Pull] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)

    @property
    def num(self) -> int:
        return self.config.num

    # --- serving -----------------------------------------------------------------------

    def serving_range(self, key: str) -> Range | None:
        """The range holding ``key`` if this group serves it now, else None."""
        r = self.config.range_for(key)
        if r.gid != self.gid:
            return None
        if any(p.range_id == r.id for p in self.pulls):
            return None
        return r

    def range_state(self, r: Range) -> str:
        if r.gid != self.gid:
            return "foreign"
        return "pulling" if any(p.range_id == r.id for p in self.pulls) else "serving"

    # --- configurations ------------------------------------------------------------------

    def can_advance(self) -> bool:
        return not self.pulls

    def unconfirmed_reclaims(self, new: Configuration) -> list[Outgoing]:
        """Outgoing intervals that ``new`` gives back to this group before their new
        owner confirmed it installed them.

        Taking ``new`` then would delete the only complete copy while the other group
        may still need to pull it (it cannot pull from us once the record is gone, and
        we cannot pull from it before it installed): wait until the record is being
        deleted (``gc``), which happens only after the other group confirmed.
        """
        out = []
        for og in self.outgoing:
            if og.gc:
                continue
            for r in new.ranges:
                if r.gid == self.gid and intersect(og.interval, (r.start, r.end)) is not None:
                    out.append(og)
                    break
        return out

    def can_take(self, new: Configuration) -> bool:
        return (new.num == self.num + 1 and not self.pulls
                and not self.unconfirmed_reclaims(new))

    def advance(self, new: Configuration) -> Advance:
        """Take configuration ``num + 1``; raises ShardError if out of order or too early."""
        if new.num != self.num + 1:
            raise ShardError(f"configuration {new.num} is not the next one after {self.num}")
        if self.pulls:
            raise ShardError(f"configuration {self.num} still has ranges to install")
        if self.unconfirmed_reclaims(new):
            raise ShardError(f"configuration {new.num} gives back ranges whose new owner "
                             "has not confirmed them yet")
        old = self.config
        me = self.gid
        out = Advance()
        for r in new.ranges:
            if r.gid != me:
                continue
            for o in old.ranges:
                iv = intersect((r.start, r.end), (o.start, o.end))
                if iv is None or o.gid == me:
                    continue
                out.clear.extend(self._reclaim(iv))
                if o.gid != 0:
                    self.pulls.append(Pull(r.id, iv[0], iv[1], o.gid))
        for o in old.ranges:
            if o.gid != me:
                continue
            for r in new.ranges:
                iv = intersect((o.start, o.end), (r.start, r.end))
                if iv is not None and r.gid != me:
                    self.outgoing.append(Outgoing(new.num, iv[0], iv[1], r.gid))
        self.config = new
        return out

    def _reclaim(self, iv: Interval) -> list[Interval]:
        """Clip outgoing records that overlap ``iv``; returns the overlaps to clear."""
        cleared: list[Interval] = []
        kept: list[Outgoing] = []
        for og in self.outgoing:
            both = intersect(og.interval, iv)
            if both is None:
                kept.append(og)
                continue
            cleared.append(both)
            for part in subtract(og.interval, iv):
                kept.append(Outgoing(og.num, part[0], part[1], og.to_gid, og.gc, og.deleted))
        self.outgoing = kept
        return cleared

    # --- installing (new owner) -----------------------------------------------------------

    def pull(self, num: int, range_id: int, start: str) -> Pull:
        """The pending pull a chunk refers to; raises ShardError if there is none."""
        if num != self.num:
            raise ShardError(f"chunk for configuration {num}, group is at {self.num}")
        for p in self.pulls:
            if p.range_id == range_id and p.start == start:
                return p
        raise ShardError(f"no pending pull of range {range_id} at {start!r}")

    def finish(self, p: Pull) -> None:
        self.pulls.remove(p)

    def installed(self, num: int, iv: Interval) -> bool:
        """Whether this group has installed everything it gained at ``num`` in ``iv``."""
        if self.num < num:
            return False
        if self.num > num:
            return True
        return not any(intersect(p.interval, iv) is not None for p in self.pulls)

    # --- handing off and deleting (old owner) ------------------------------------------------

    def outgoing_for(self, num: int, iv: Interval, to_gid: int) -> Outgoing | None:
        for og in self.outgoing:
            if og.num == num and og.to_gid == to_gid and covers(og.interval, iv):
                return og
        return None

    def outgoing_exact(self, num: int, iv: Interval) -> Outgoing | None:
        for og in self.outgoing:
            if og.num == num and og.interval == iv:
                return og
        return None

    # --- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"gid": self.gid, "config": self.config.to_dict(),
                "pulls": [p.to_list() for p in self.pulls],
                "outgoing": [o.to_list() for o in self.outgoing]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ShardState:
        try:
            return ShardState(int(d["gid"]), Configuration.from_dict(d["config"]),
                              [Pull.from_list(p) for p in d["pulls"]],
                              [Outgoing.from_list(o) for o in d["outgoing"]])
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"malformed shard state: {e}") from e

    def view(self) -> dict[str, Any]:
        """A JSON-friendly description for status and ``shardctl show``."""
        return {
            "num": self.num,
            "ranges": [{"id": r.id, "start": r.start, "end": r.end, "version": r.version,
                        "state": self.range_state(r)} for r in self.config.ranges
                       if r.gid == self.gid],
            "pulling": [{"range": p.range_id, "start": p.start, "end": p.end,
                         "from": p.src_gid, "phase": "keys" if p.phase == KEYS else "sessions",
                         "keys": p.keys, "chunks": p.chunks} for p in self.pulls],
            "outgoing": [{"num": o.num, "start": o.start, "end": o.end, "to": o.to_gid,
                          "state": "gc" if o.gc else "sending", "deleted": o.deleted}
                         for o in self.outgoing],
        }
