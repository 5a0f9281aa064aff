"""The rebalance planner: pure, deterministic, and moving as few ranges as possible.

:func:`plan` looks at one configuration (and, optionally, the size of each range) and
proposes moves such that, afterwards, every live group owns ``floor(n/g)`` or
``ceil(n/g)`` of the ``n`` ranges (``g`` live groups) and no range is owned by a group
that is not live (unassigned ranges, ``gid == 0``, and ranges of groups left out of
``groups`` are all moved to live groups).

Minimality: with ``c_i`` ranges on live group ``i``, ``q = n // g``, ``r = n % g`` and
``O`` ranges not on a live group, the plan has exactly
``O + sum(max(0, c_i - q)) - min(r, #{i : c_i > q})`` moves, which is the least possible:
every range that stays where it is counts towards its group's final size, so at least
that many ranges must change group. Among the plans of that size it copies the least
data: it moves the ranges with the fewest bytes (then fewest keys, then smallest id),
and the ``r`` "one extra range" slots go to the over-full groups whose marginal range
is the most expensive to move.

The plan is a pure function of the configuration, the sizes and the *set* of live
groups (their order and duplicates in ``groups`` do not matter). Submitting it is
``CtrlCommand(CtrlOp.APPLY_PLAN, moves=plan.as_moves())``; the controller drops any move
whose range changed version meanwhile (SHARDING.md rule 10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.ctrler.config import Configuration, Range
from kvraft.ctrler.machine import CtrlCommand, CtrlOp, CtrlRejected, next_configuration


@dataclass(frozen=True, slots=True)
class RangeSize:
    """How much data a range holds (as last reported by its owner)."""

    keys: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Move:
    """Move range ``range_id`` (now at ``version``) from ``from_gid`` to ``to_gid``."""

    range_id: int
    version: int
    start: str
    end: str | None
    from_gid: int
    to_gid: int
    keys: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "range_id": self.range_id, "version": self.version, "start": self.start,
            "end": self.end, "from_gid": self.from_gid, "to_gid": self.to_gid,
            "keys": self.keys, "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The moves planned from configuration ``num``, in key order, and their cost."""

    num: int
    moves: tuple[Move, ...]
    keys: int
    bytes: int
    est_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what ``shardctl rebalance`` shows before acting)."""
        return {
            "num": self.num,
            "moves": [m.to_dict() for m in self.moves],
            "keys": self.keys,
            "bytes": self.bytes,
            "est_seconds": self.est_seconds,
        }

    def as_moves(self) -> tuple[tuple[int, int, int], ...]:
        """``(range_id, expected_version, to_gid)`` triples for ``APPLY_PLAN``."""
        return tuple((m.range_id, m.version, m.to_gid) for m in self.moves)


def plan(config: Configuration, sizes: Mapping[int, RangeSize] | None = None, *,
         groups: Sequence[int] | None = None, bytes_per_s: float = 50e6) -> Plan:
    """Plan a balanced assignment of ``config``'s ranges to the live groups.

    ``sizes`` maps range id to its size (missing ranges count as empty). ``groups`` is
    the set of live groups (default: every joined group); each must be a group of
    ``config``, else ValueError. With no live group the plan is empty. ``est_seconds``
    is ``bytes / bytes_per_s``; ``bytes_per_s`` must be positive.
    """
    if not bytes_per_s > 0:
        raise ValueError("bytes_per_s must be positive")
    joined = config.group_ids()
    live = sorted(set(groups)) if groups is not None else joined
    unknown = sorted(set(live) - set(joined))
    if unknown:
        raise ValueError(f"not joined groups: {unknown}")
    if not live:
        return Plan(config.num, (), 0, 0, 0.0)

    def size(r: Range) -> RangeSize:
        return sizes.get(r.id, RangeSize()) if sizes is not None else RangeSize()

    def cost(r: Range) -> tuple[int, int, int]:
        s = size(r)
        return (s.bytes, s.keys, r.id)

    q, extra = divmod(len(config.ranges), len(live))
    live_set = set(live)
    # Each live group's ranges, cheapest to move first.
    owned = {g: sorted(config.ranges_of(g), key=cost) for g in live}
    count = {g: len(owned[g]) for g in live}
    orphans = [r for r in config.ranges if r.gid not in live_set]

    # Which groups end with q + 1 ranges: first the over-full groups (each such slot
    # saves one move), preferring those whose marginal range costs most to move.
    over = [g for g in live if count[g] > q]
    over.sort(key=lambda g: cost(owned[g][count[g] - q - 1]), reverse=True)
    bigger = set(over[:extra])
    if len(bigger) < extra:
        rest = sorted((g for g in live if g not in bigger), key=lambda g: (-count[g], g))
        bigger.update(rest[: extra - len(bigger)])
    target = {g: q + 1 if g in bigger else q for g in live}

    leaving: list[Range] = list(orphans)
    for g in live:
        leaving.extend(owned[g][: max(0, count[g] - target[g])])
    leaving.sort(key=lambda r: r.start)
    # Fill the under-full groups in gid order with the leaving ranges in key order, so a
    # group tends to receive neighbouring ranges (which it may later merge).
    receivers = [g for g in live for _ in range(max(0, target[g] - count[g]))]
    assert len(receivers) == len(leaving), "plan arithmetic broken"

    moves = tuple(
        Move(r.id, r.version, r.start, r.end, r.gid, to, size(r).keys, size(r).bytes)
        for r, to in zip(leaving, receivers, strict=True)
    )
    nbytes = sum(m.bytes for m in moves)
    return Plan(config.num, moves, sum(m.keys for m in moves), nbytes, nbytes / bytes_per_s)


def apply_plan_to(config: Configuration, p: Plan) -> Configuration:
    """The configuration ``APPLY_PLAN(p.as_moves())`` makes from ``config``: ``num + 1``
    with the still-valid moves applied, or ``config`` itself if no move applies."""
    if not p.moves:
        return config
    try:
        new = next_configuration(config, CtrlCommand(CtrlOp.APPLY_PLAN, moves=p.as_moves()))
    except CtrlRejected:
        return config
    assert new is not None
    return new
