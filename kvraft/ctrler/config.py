"""Configurations of the shard controller: which group owns which key range.

A :class:`Configuration` is an immutable value. Configuration ``N+1`` is only ever made
from configuration ``N`` by the controller's state machine (``kvraft.ctrler.machine``);
this module only describes, checks and (de)serializes them.

Key order is the byte order of the keys' UTF-8 encoding, which for Python ``str`` is the
same as plain ``str`` comparison (code point order), so keys are compared as ``str``.

Invariants of a valid configuration (:meth:`Configuration.validate`):

* ``num >= 0``;
* ``ranges`` is non-empty, sorted by ``start``, contiguous (each range's ``end`` is the
  next one's ``start``), each non-empty (``start < end``), the first starts at ``""`` and
  the last has ``end is None``: together they cover the whole key space exactly once;
* range ids are unique, ``>= 1`` and ``< next_range_id``; versions are ``>= 1``;
* every range's ``gid`` is either ``0`` (unassigned) or a group in ``groups``;
* ``groups`` is sorted by gid (unique, ``>= 1``), each group has at least one member,
  members are sorted by node id (unique, ``>= 1``) and addresses are non-empty strings.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GroupMembers = tuple[tuple[int, str], ...]
"""A group's members: ``((node_id, "host:port"), ...)`` sorted by node id."""

Groups = tuple[tuple[int, GroupMembers], ...]
"""All groups: ``((gid, members), ...)`` sorted by gid. Hashable, unlike a dict."""


class ConfigError(ValueError):
    """A configuration (or its serialized form) is malformed or breaks an invariant."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_int_key(v: object, what: str) -> int:
    """An integer map key: an ``int`` or its canonical decimal ``str`` (JSON object keys)."""
    if _is_int(v):
        assert isinstance(v, int)
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit() and str(int(v)) == v:
        return int(v)
    raise ConfigError(f"{what} must be an integer, got {v!r}")


@dataclass(frozen=True, slots=True)
class Range:
    """The keys ``[start, end)`` and the group that owns them.

    ``end is None`` means unbounded (the last range). ``gid == 0`` means unassigned (only
    before the first group joins). ``version`` goes up on every split, merge or move of
    the range, so a command or plan carrying an older version is recognisably stale.
    """

    id: int
    start: str
    end: str | None
    gid: int
    version: int

    def contains(self, key: str) -> bool:
        """True iff ``start <= key`` and (``end is None`` or ``key < end``)."""
        return self.start <= key and (self.end is None or key < self.end)

    def overlaps(self, start: str, end: str | None) -> bool:
        """True iff this range shares at least one key with ``[start, end)``.

        ``end is None`` means unbounded. An empty interval (``end <= start``) overlaps
        nothing.
        """
        if end is not None and end <= start:
            return False
        return (end is None or self.start < end) and (self.end is None or start < self.end)

    def to_list(self) -> list[Any]:
        """``[id, start, end, gid, version]`` (JSON and msgpack compatible)."""
        return [self.id, self.start, self.end, self.gid, self.version]

    @staticmethod
    def from_list(raw: object) -> Range:
        """The inverse of :meth:`to_list`; raises :class:`ConfigError` if malformed.

        Only types and per-field bounds are checked here (id >= 1, gid >= 0,
        version >= 1, start < end); how ranges fit together is
        :meth:`Configuration.validate`'s job.
        """
        if not isinstance(raw, list | tuple) or len(raw) != 5:
            raise ConfigError(f"a range must be [id, start, end, gid, version], got {raw!r}")
        rid, start, end, gid, version = raw
        if not (_is_int(rid) and _is_int(gid) and _is_int(version)):
            raise ConfigError(f"range id, gid and version must be integers: {raw!r}")
        if not isinstance(start, str) or not (end is None or isinstance(end, str)):
            raise ConfigError(f"range start must be a string and end a string or null: {raw!r}")
        r = Range(rid, start, end, gid, version)
        _check_range(r)
        return r


def _check_range(r: Range) -> None:
    if not (_is_int(r.id) and _is_int(r.gid) and _is_int(r.version)):
        raise ConfigError(f"range id, gid and version must be integers: {r!r}")
    if not isinstance(r.start, str) or not (r.end is None or isinstance(r.end, str)):
        raise ConfigError(f"range start must be a string and end a string or None: {r!r}")
    if r.id < 1:
        raise ConfigError(f"range id must be >= 1, got {r.id}")
    if r.gid < 0:
        raise ConfigError(f"range {r.id}: gid must be >= 0, got {r.gid}")
    if r.version < 1:
        raise ConfigError(f"range {r.id}: version must be >= 1, got {r.version}")
    if r.end is not None and not r.start < r.end:
        raise ConfigError(f"range {r.id}: empty range [{r.start!r}, {r.end!r})")


def freeze_groups(groups: Mapping[int, Mapping[int, str]]) -> Groups:
    """The canonical hashable form of ``{gid: {node_id: addr}}`` (sorted; not validated)."""
    return tuple(
        (gid, tuple(sorted(members.items()))) for gid, members in sorted(groups.items())
    )


@dataclass(frozen=True, slots=True)
class Configuration:
    """Configuration ``num``: ranges -> group, groups -> members. Immutable.

    Construct freely, but only a configuration that passes :meth:`validate` is
    meaningful; :meth:`from_dict` and the controller machine only ever produce valid
    ones. Lookups assume validity.
    """

    num: int
    ranges: tuple[Range, ...]
    groups: Groups
    next_range_id: int
    _starts: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(r.start for r in self.ranges))

    def members(self, gid: int) -> dict[int, str]:
        """``{node_id: addr}`` of group ``gid`` (a fresh dict); empty if not a group."""
        for g, members in self.groups:
            if g == gid:
                return dict(members)
        return {}

    def group_ids(self) -> list[int]:
        """The joined groups' ids, ascending."""
        return [g for g, _ in self.groups]

    def range_for(self, key: str) -> Range:
        """The range containing ``key`` (O(log n)). Raises ConfigError only if invalid."""
        i = bisect_right(self._starts, key) - 1
        if i < 0 or not self.ranges[i].contains(key):
            raise ConfigError(f"no range contains {key!r}: configuration is invalid")
        return self.ranges[i]

    def range_by_id(self, rid: int) -> Range | None:
        """The range with id ``rid``, or None."""
        for r in self.ranges:
            if r.id == rid:
                return r
        return None

    def range_starting_at(self, key: str) -> int | None:
        """The index in ``ranges`` of the range whose ``start == key``, or None."""
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and self._starts[i] == key:
            return i
        return None

    def ranges_of(self, gid: int) -> list[Range]:
        """The ranges owned by ``gid``, in key order (``gid=0``: the unassigned ones)."""
        return [r for r in self.ranges if r.gid == gid]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form; group and node ids become string keys.

        ``{"num": N, "ranges": [[id, start, end, gid, version], ...],
        "groups": {"gid": {"node_id": "host:port"}}, "next_range_id": M}``
        """
        return {
            "num": self.num,
            "ranges": [r.to_list() for r in self.ranges],
            "groups": {
                str(gid): {str(nid): addr for nid, addr in members}
                for gid, members in self.groups
            },
            "next_range_id": self.next_range_id,
        }

    @staticmethod
    def from_dict(d: object) -> Configuration:
        """The inverse of :meth:`to_dict`, validated; raises :class:`ConfigError`.

        Group and node ids may be ints or canonical decimal strings (JSON gives strings,
        msgpack may give ints). Never raises any other exception type.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a configuration must be an object, got {type(d).__name__}")
        want = {"num", "ranges", "groups", "next_range_id"}
        if set(d.keys()) != want:
            raise ConfigError(f"configuration keys must be {sorted(want)}, got {list(d.keys())!r}")
        num, raw_ranges, raw_groups, next_id = (
            d["num"], d["ranges"], d["groups"], d["next_range_id"]
        )
        if not (_is_int(num) and _is_int(next_id)):
            raise ConfigError("num and next_range_id must be integers")
        if not isinstance(raw_ranges, list | tuple):
            raise ConfigError("ranges must be a list")
        ranges = tuple(Range.from_list(r) for r in raw_ranges)
        if not isinstance(raw_groups, Mapping):
            raise ConfigError("groups must be an object")
        groups: dict[int, dict[int, str]] = {}
        for k, members in raw_groups.items():
            gid = _parse_int_key(k, "group id")
            if gid in groups:
                raise ConfigError(f"group {gid} appears twice")
            if not isinstance(members, Mapping):
                raise ConfigError(f"group {gid}: members must be an object")
            ms: dict[int, str] = {}
            for nk, addr in members.items():
                nid = _parse_int_key(nk, "node id")
                if nid in ms:
                    raise ConfigError(f"group {gid}: node {nid} appears twice")
                if not isinstance(addr, str):
                    raise ConfigError(f"group {gid}: address of node {nid} must be a string")
                ms[nid] = addr
            groups[gid] = ms
        config = Configuration(num, ranges, freeze_groups(groups), next_id)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every invariant in the module docstring; raise :class:`ConfigError`."""
        if not _is_int(self.num) or self.num < 0:
            raise ConfigError(f"num must be an integer >= 0, got {self.num!r}")
        if not _is_int(self.next_range_id):
            raise ConfigError("next_range_id must be an integer")
        gids: set[int] = set()
        prev_gid = 0
        for entry in self.groups:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise ConfigError(f"malformed group entry {entry!r}")
            gid, members = entry
            if not _is_int(gid) or gid < 1:
                raise ConfigError(f"group id must be an integer >= 1, got {gid!r}")
            if gid <= prev_gid:
                raise ConfigError("groups must be sorted by gid without duplicates")
            prev_gid = gid
            gids.add(gid)
            if not isinstance(members, tuple) or not members:
                raise ConfigError(f"group {gid} must have at least one member")
            prev_nid = 0
            for m in members:
                if not (isinstance(m, tuple) and len(m) == 2):
                    raise ConfigError(f"group {gid}: malformed member {m!r}")
                nid, addr = m
                if not _is_int(nid) or nid < 1:
                    raise ConfigError(f"group {gid}: node id must be an integer >= 1: {nid!r}")
                if nid <= prev_nid:
                    raise ConfigError(f"group {gid}: members must be sorted, no duplicates")
                prev_nid = nid
                if not isinstance(addr, str) or not addr:
                    raise ConfigError(f"group {gid}: node {nid} needs a non-empty address")
        if not self.ranges:
            raise ConfigError("a configuration needs at least one range")
        if self.ranges[0].start != "":
            raise ConfigError("the first range must start at ''")
        ids: set[int] = set()
        for i, r in enumerate(self.ranges):
            if not isinstance(r, Range):
                raise ConfigError(f"malformed range {r!r}")
            _check_range(r)
            if r.id in ids:
                raise ConfigError(f"range id {r.id} appears twice")
            ids.add(r.id)
            if r.id >= self.next_range_id:
                raise ConfigError(f"range id {r.id} >= next_range_id {self.next_range_id}")
            if r.gid != 0 and r.gid not in gids:
                raise ConfigError(f"range {r.id} is owned by unknown group {r.gid}")
            last = i == len(self.ranges) - 1
            if last and r.end is not None:
                raise ConfigError("the last range must be unbounded (end None)")
            if not last and r.end != self.ranges[i + 1].start:
                raise ConfigError(f"range {r.id} does not end where the next range starts")


def initial_configuration() -> Configuration:
    """Configuration 0: one unassigned range ``["", None)`` with id 1, no groups."""
    return Configuration(num=0, ranges=(Range(1, "", None, 0, 1),), groups=(), next_range_id=2)
