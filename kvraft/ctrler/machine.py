"""The shard controller's deterministic state machine.

It runs inside the controller's Raft group: every replica applies the same committed
command bytes in the same order and so holds the same configurations. Each successful
change makes configuration ``N+1`` from configuration ``N`` (never skipping a number);
a rejected or idempotent command changes nothing.

Commands travel as msgpack:
``[format_version, op, gid, [[node_id, addr], ...], range_id, version, key,
[[range_id, version, to_gid], ...]]``.

Operations (``gid`` is the target group of JOIN, LEAVE and MOVE):

* ``JOIN(gid, members)``: add group ``gid`` (or replace its members). The first group to
  join takes every unassigned range; otherwise no range moves (rebalancing is explicit:
  plan with ``kvraft.ctrler.rebalance`` and submit ``APPLY_PLAN``). Joining again with
  identical members is an idempotent success with no new configuration.
* ``LEAVE(gid)``: remove group ``gid``; its ranges go, one at a time in key order, to the
  remaining group with the fewest ranges (ties: smaller gid). The last group cannot
  leave while it owns ranges.
* ``MOVE(range_id, gid, version)``: give the range to group ``gid``; ``version`` is the
  expected range version (0 = any).
* ``SPLIT(key)``: split the range containing ``key`` at ``key`` (metadata only).
* ``MERGE(key)``: merge the range starting at ``key`` into its left neighbour, which
  must be owned by the same group.
* ``MEMBERS(gid, members)``: a joined group reports its members after a membership
  change (the same as JOIN of a group that is already there, but refused for a group
  that is not: a stale report must not bring back a group that left).
* ``APPLY_PLAN(moves)``: apply ``(range_id, expected_version, to_gid)`` moves in one new
  configuration, dropping stale ones (SHARDING.md rule 10).
* ``TOKEN_PUT(key=name, token_hash, role)``: add a client token, known by the SHA-256 of
  its text only (the token itself never reaches the controller's log). A name already
  taken is refused, unless with the same hash and role (a retry).
* ``TOKEN_REVOKE(key=name)``: remove a token.

Token commands make no configuration: they change the token table and its
``tokens_version``, which every node polls (``kvraft.transport.auth``). A token command
carries a ninth element, ``[token_hash, role]``.

Every range touched by a split, merge or move gets a higher version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import msgpack

from kvraft.ctrler.config import ConfigError, Configuration, Range, initial_configuration

FORMAT_VERSION = 1


class CtrlOp(IntEnum):
    JOIN = 1
    LEAVE = 2
    MOVE = 3
    SPLIT = 4
    MERGE = 5
    APPLY_PLAN = 6
    MEMBERS = 7
    TOKEN_PUT = 8
    TOKEN_REVOKE = 9


TOKEN_OPS = (CtrlOp.TOKEN_PUT, CtrlOp.TOKEN_REVOKE)
ROLES = {1: "read", 2: "write", 3: "admin"}
"""Token roles by number (``kvraft.transport.auth.Role`` has the same values)."""
MAX_TOKENS = 10_000
_HEX = frozenset("0123456789abcdef")


def valid_token_name(name: str) -> bool:
    return (0 < len(name) <= 64 and name.isascii()
            and all(c.isalnum() or c in "_.-" for c in name))


class CtrlDecodeError(ValueError):
    """The bytes are not a controller command this version understands."""


class CtrlRejected(ValueError):
    """A well-formed command that cannot be applied to the configuration (one-line reason)."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class CtrlCommand:
    """One controller command; fields that an op does not use keep their defaults.

    ``gid``: JOIN/LEAVE group, MOVE target group. ``members``: JOIN ``(node_id, addr)``
    pairs. ``range_id``/``version``: MOVE range and expected version (0 = any). ``key``:
    SPLIT point, or MERGE: start of the range merged into its left neighbour.
    ``moves``: APPLY_PLAN ``(range_id, expected_version, to_gid)`` triples.
    """

    op: CtrlOp
    gid: int = 0
    members: tuple[tuple[int, str], ...] = ()
    range_id: int = 0
    version: int = 0
    key: str = ""
    moves: tuple[tuple[int, int, int], ...] = ()
    token_hash: str = ""
    role: int = 0

    def encode(self) -> bytes:
        """msgpack bytes, format version first. Integers must fit in 64 bits."""
        fields: list[Any] = [FORMAT_VERSION, int(self.op), self.gid,
                             [list(m) for m in self.members], self.range_id, self.version,
                             self.key, [list(m) for m in self.moves]]
        if self.op in TOKEN_OPS:
            fields.append([self.token_hash, self.role])
        out = msgpack.packb(fields, use_bin_type=True)
        assert isinstance(out, bytes)
        return out

    @staticmethod
    def decode(data: bytes) -> CtrlCommand:
        """The inverse of :meth:`encode`. For any input whatsoever it either returns a
        command or raises :class:`CtrlDecodeError`, never another exception type."""
        try:
            raw: Any = msgpack.unpackb(data, raw=False)
        except Exception as e:  # msgpack raises many types on garbage; all mean "malformed"
            raise CtrlDecodeError(f"malformed controller command: {type(e).__name__}") from e
        if not isinstance(raw, list) or len(raw) not in (8, 9):
            raise CtrlDecodeError("a controller command must be an 8-element array "
                                  "(9 for a token command)")
        version, op, gid, members, range_id, rversion, key, moves = raw[:8]
        if version != FORMAT_VERSION or not _is_int(version):
            raise CtrlDecodeError(f"unknown controller command format version {version!r}")
        if not (_is_int(op) and _is_int(gid) and _is_int(range_id) and _is_int(rversion)):
            raise CtrlDecodeError("op, gid, range_id and version must be integers")
        if not isinstance(key, str):
            raise CtrlDecodeError("key must be a string")
        if not isinstance(members, list) or not isinstance(moves, list):
            raise CtrlDecodeError("members and moves must be arrays")
        ms: list[tuple[int, str]] = []
        for m in members:
            if not (isinstance(m, list) and len(m) == 2 and _is_int(m[0])
                    and isinstance(m[1], str)):
                raise CtrlDecodeError("a member must be [node_id, addr]")
            ms.append((m[0], m[1]))
        mv: list[tuple[int, int, int]] = []
        for m in moves:
            if not (isinstance(m, list) and len(m) == 3 and all(_is_int(x) for x in m)):
                raise CtrlDecodeError("a move must be [range_id, version, to_gid]")
            mv.append((m[0], m[1], m[2]))
        try:
            cop = CtrlOp(op)
        except ValueError as e:
            raise CtrlDecodeError(f"unknown controller op {op!r}") from e
        if (len(raw) == 9) != (cop in TOKEN_OPS):
            raise CtrlDecodeError("a token command has 9 elements, any other 8")
        th, role = "", 0
        if cop in TOKEN_OPS:
            tok = raw[8]
            if not (isinstance(tok, list) and len(tok) == 2 and isinstance(tok[0], str)
                    and _is_int(tok[1])):
                raise CtrlDecodeError("a token command ends with [token_hash, role]")
            th, role = tok
        return CtrlCommand(cop, gid, tuple(ms), range_id, rversion, key, tuple(mv), th, role)


@dataclass(frozen=True, slots=True)
class CtrlResult:
    """The answer to one applied command.

    ``num`` is the latest configuration number after applying; ``changed`` is True iff a
    new configuration was made. ``dropped`` counts APPLY_PLAN moves skipped as stale.
    """

    ok: bool
    num: int
    error: str = ""
    changed: bool = False
    dropped: int = 0
    tokens_changed: bool = False


# --- transitions: pure functions Configuration -> next Configuration -------------------


def _with(config: Configuration, ranges: Iterable[Range] | None = None,
          groups: dict[int, tuple[tuple[int, str], ...]] | None = None,
          next_range_id: int | None = None) -> Configuration:
    """Configuration ``num + 1`` from ``config`` with the given parts replaced."""
    return Configuration(
        num=config.num + 1,
        ranges=tuple(ranges) if ranges is not None else config.ranges,
        groups=tuple(sorted(groups.items())) if groups is not None else config.groups,
        next_range_id=next_range_id if next_range_id is not None else config.next_range_id,
    )


def _join(config: Configuration, cmd: CtrlCommand) -> Configuration | None:
    if cmd.gid < 1:
        raise CtrlRejected(f"group id must be >= 1, got {cmd.gid}")
    if not cmd.members:
        raise CtrlRejected(f"group {cmd.gid} needs at least one member")
    members = tuple(sorted(cmd.members))
    nids = [nid for nid, _ in members]
    if len(set(nids)) != len(nids):
        raise CtrlRejected(f"group {cmd.gid}: a node id appears twice")
    for nid, addr in members:
        if nid < 1:
            raise CtrlRejected(f"group {cmd.gid}: node id must be >= 1, got {nid}")
        if not addr:
            raise CtrlRejected(f"group {cmd.gid}: node {nid} needs an address")
    groups = dict(config.groups)
    if cmd.gid in groups:
        if groups[cmd.gid] == members:
            return None
        groups[cmd.gid] = members
        return _with(config, groups=groups)
    groups[cmd.gid] = members
    ranges = [
        replace(r, gid=cmd.gid, version=r.version + 1) if r.gid == 0 else r
        for r in config.ranges
    ]
    return _with(config, ranges=ranges, groups=groups)


def _leave(config: Configuration, cmd: CtrlCommand) -> Configuration:
    groups = dict(config.groups)
    if cmd.gid not in groups:
        raise CtrlRejected(f"unknown group {cmd.gid}")
    del groups[cmd.gid]
    owned = [r for r in config.ranges if r.gid == cmd.gid]
    if owned and not groups:
        raise CtrlRejected("cannot remove the last group")
    counts = {g: 0 for g in groups}
    for r in config.ranges:
        if r.gid in counts:
            counts[r.gid] += 1
    ranges: list[Range] = []
    for r in config.ranges:
        if r.gid == cmd.gid:
            to = min(sorted(counts), key=lambda g: (counts[g], g))
            counts[to] += 1
            r = replace(r, gid=to, version=r.version + 1)
        ranges.append(r)
    return _with(config, ranges=ranges, groups=groups)


def _move(config: Configuration, cmd: CtrlCommand) -> Configuration:
    r = config.range_by_id(cmd.range_id)
    if r is None:
        raise CtrlRejected(f"unknown range {cmd.range_id}")
    if cmd.version != 0 and cmd.version != r.version:
        raise CtrlRejected(f"range {r.id} is at version {r.version}, not {cmd.version}")
    if cmd.gid not in dict(config.groups):
        raise CtrlRejected(f"unknown group {cmd.gid}")
    if r.gid == cmd.gid:
        raise CtrlRejected(f"range {r.id} already owned by group {cmd.gid}")
    moved = replace(r, gid=cmd.gid, version=r.version + 1)
    return _with(config, ranges=[moved if x.id == r.id else x for x in config.ranges])


def _split(config: Configuration, cmd: CtrlCommand) -> Configuration:
    r = config.range_for(cmd.key)
    if cmd.key == r.start:
        raise CtrlRejected(f"range {r.id} already starts at {cmd.key!r}")
    left = Range(r.id, r.start, cmd.key, r.gid, r.version + 1)
    right = Range(config.next_range_id, cmd.key, r.end, r.gid, r.version + 1)
    ranges: list[Range] = []
    for x in config.ranges:
        ranges.extend((left, right) if x.id == r.id else (x,))
    return _with(config, ranges=ranges, next_range_id=config.next_range_id + 1)


def _merge(config: Configuration, cmd: CtrlCommand) -> Configuration:
    if cmd.key == "":
        raise CtrlRejected("the first range has no left neighbour to merge into")
    i = config.range_starting_at(cmd.key)
    if i is None:
        raise CtrlRejected(f"no range starts at {cmd.key!r}")
    left, right = config.ranges[i - 1], config.ranges[i]
    if left.gid != right.gid:
        raise CtrlRejected(
            f"ranges {left.id} and {right.id} are owned by different groups "
            f"({left.gid} and {right.gid})")
    merged = Range(left.id, left.start, right.end, left.gid,
                   max(left.version, right.version) + 1)
    ranges = config.ranges[:i - 1] + (merged,) + config.ranges[i + 1:]
    return _with(config, ranges=ranges)


def _apply_plan(config: Configuration, cmd: CtrlCommand) -> tuple[Configuration, int]:
    if not cmd.moves:
        raise CtrlRejected("plan is empty")
    gids = set(config.group_ids())
    by_id = {r.id: r for r in config.ranges}
    dropped = 0
    for rid, version, to in cmd.moves:
        r = by_id.get(rid)
        if r is None or r.version != version or to not in gids or r.gid == to:
            dropped += 1
            continue
        by_id[rid] = replace(r, gid=to, version=r.version + 1)
    if dropped == len(cmd.moves):
        raise CtrlRejected("plan is stale")
    return _with(config, ranges=[by_id[r.id] for r in config.ranges]), dropped


def _transition(config: Configuration, cmd: CtrlCommand) -> tuple[Configuration | None, int]:
    if cmd.op is CtrlOp.JOIN:
        return _join(config, cmd), 0
    if cmd.op is CtrlOp.LEAVE:
        return _leave(config, cmd), 0
    if cmd.op is CtrlOp.MOVE:
        return _move(config, cmd), 0
    if cmd.op is CtrlOp.SPLIT:
        return _split(config, cmd), 0
    if cmd.op is CtrlOp.MERGE:
        return _merge(config, cmd), 0
    if cmd.op is CtrlOp.APPLY_PLAN:
        return _apply_plan(config, cmd)
    if cmd.op is CtrlOp.MEMBERS:
        if cmd.gid not in dict(config.groups):
            raise CtrlRejected(f"group {cmd.gid} is not joined: its members are not tracked")
        return _join(config, cmd), 0
    raise CtrlRejected(f"unknown op {cmd.op!r}")


def next_configuration(config: Configuration, cmd: CtrlCommand) -> Configuration | None:
    """The configuration ``cmd`` makes from valid ``config`` (its ``num`` is
    ``config.num + 1``), or None if the command is an idempotent no-op. Raises
    :class:`CtrlRejected` if the command cannot be applied. Pure; the result is valid."""
    new, _ = _transition(config, cmd)
    if new is not None:
        new.validate()
    return new


class ControllerMachine:
    """The replicated controller state: a window of the latest configurations.

    Contract: :meth:`apply` is deterministic (the same byte sequence gives the same
    state and results on every replica) and never raises for any input bytes; a bad or
    inapplicable command yields ``ok=False`` and changes nothing. Configuration numbers
    are contiguous; at most ``history_keep`` are retained, always including the latest.
    """

    def __init__(self, history_keep: int = 1000) -> None:
        if history_keep < 1:
            raise ValueError("history_keep must be >= 1")
        self._keep = history_keep
        self._configs: list[Configuration] = [initial_configuration()]
        self._tokens: dict[str, tuple[str, int]] = {}
        self.tokens_version = 0

    def apply(self, data: bytes) -> CtrlResult:
        """Decode and apply one committed command."""
        cur = self._configs[-1]
        try:
            cmd = CtrlCommand.decode(data)
        except CtrlDecodeError as e:
            return CtrlResult(False, cur.num, str(e))
        if cmd.op in TOKEN_OPS:
            try:
                changed = self._token(cmd)
            except CtrlRejected as e:
                return CtrlResult(False, cur.num, str(e))
            if changed:
                self.tokens_version += 1
            return CtrlResult(True, cur.num, tokens_changed=changed)
        try:
            new, dropped = _transition(cur, cmd)
            if new is not None:
                new.validate()
        except (CtrlRejected, ConfigError) as e:
            # ConfigError here would be a bug in a transition; refusing the command
            # deterministically keeps every replica alive and identical.
            return CtrlResult(False, cur.num, str(e))
        if new is None:
            return CtrlResult(True, cur.num)
        self._configs.append(new)
        if len(self._configs) > self._keep:
            del self._configs[: len(self._configs) - self._keep]
        return CtrlResult(True, new.num, changed=True, dropped=dropped)

    def _token(self, cmd: CtrlCommand) -> bool:
        name = cmd.key
        if not valid_token_name(name):
            raise CtrlRejected("a token name is 1 to 64 of A-Z a-z 0-9 _ . -")
        if cmd.op is CtrlOp.TOKEN_REVOKE:
            if name not in self._tokens:
                raise CtrlRejected(f"no token named {name!r}")
            del self._tokens[name]
            return True
        h = cmd.token_hash
        if len(h) != 64 or not set(h) <= _HEX:
            raise CtrlRejected("token_hash must be a SHA-256 in lower-case hex")
        if cmd.role not in ROLES:
            raise CtrlRejected("role must be 1 (read), 2 (write) or 3 (admin)")
        old = self._tokens.get(name)
        if old == (h, cmd.role):
            return False  # a retry of the same command
        if old is not None:
            raise CtrlRejected(f"a token named {name!r} exists: revoke it first")
        if any(th == h for th, _ in self._tokens.values()):
            raise CtrlRejected("another token has this hash")
        if len(self._tokens) >= MAX_TOKENS:
            raise CtrlRejected(f"at most {MAX_TOKENS} tokens")
        self._tokens[name] = (h, cmd.role)
        return True

    def tokens(self) -> dict[str, tuple[str, int]]:
        """name -> (sha256, role), a new dict."""
        return dict(self._tokens)

    def load_tokens(self, version: int, tokens: dict[str, tuple[str, int]]) -> None:
        self.tokens_version = version
        self._tokens = dict(tokens)

    def latest(self) -> Configuration:
        return self._configs[-1]

    def query(self, num: int) -> Configuration | None:
        """Configuration ``num``; ``num < 0`` means the latest. None if it was dropped
        from the retained window or has not been made yet."""
        if num < 0:
            return self._configs[-1]
        i = num - self._configs[0].num
        if 0 <= i < len(self._configs):
            return self._configs[i]
        return None

    def configurations(self) -> list[Configuration]:
        """The retained configurations, oldest first (a new list)."""
        return list(self._configs)

    def load(self, configs: list[Configuration]) -> None:
        """Replace the state with persisted configurations (oldest first).

        Raises :class:`ConfigError`, leaving the state unchanged, unless ``configs`` is
        non-empty, every configuration validates and their numbers are consecutive.
        Only the newest ``history_keep`` are kept.
        """
        if not configs:
            raise ConfigError("no configurations to load")
        for c in configs:
            if not isinstance(c, Configuration):
                raise ConfigError(f"not a configuration: {type(c).__name__}")
            c.validate()
        for a, b in zip(configs, configs[1:], strict=False):
            if b.num != a.num + 1:
                raise ConfigError(f"configuration {b.num} follows {a.num}: not contiguous")
        self._configs = list(configs[-self._keep:])
