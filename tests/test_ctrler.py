"""The pure shard controller: configurations, the controller machine, the planner."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.ctrler import (
    ConfigError,
    Configuration,
    ControllerMachine,
    CtrlCommand,
    CtrlDecodeError,
    CtrlOp,
    CtrlRejected,
    CtrlResult,
    Plan,
    Range,
    RangeSize,
    apply_plan_to,
    freeze_groups,
    initial_configuration,
    next_configuration,
    plan,
)

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- helpers -----------------------------------------------------------------------


def members(gid: int, n: int = 3) -> tuple[tuple[int, str], ...]:
    return tuple((gid * 10 + i, f"10.0.{gid}.{i}:7000") for i in range(1, n + 1))


def join(gid: int, n: int = 3) -> bytes:
    return CtrlCommand(CtrlOp.JOIN, gid=gid, members=members(gid, n)).encode()


def leave(gid: int) -> bytes:
    return CtrlCommand(CtrlOp.LEAVE, gid=gid).encode()


def move(rid: int, to: int, version: int = 0) -> bytes:
    return CtrlCommand(CtrlOp.MOVE, gid=to, range_id=rid, version=version).encode()


def split(key: str) -> bytes:
    return CtrlCommand(CtrlOp.SPLIT, key=key).encode()


def merge(key: str) -> bytes:
    return CtrlCommand(CtrlOp.MERGE, key=key).encode()


def apply_plan(moves: tuple[tuple[int, int, int], ...]) -> bytes:
    return CtrlCommand(CtrlOp.APPLY_PLAN, moves=moves).encode()


def ok(m: ControllerMachine, data: bytes) -> CtrlResult:
    res = m.apply(data)
    assert res.ok, res.error
    return res


def rejected(m: ControllerMachine, data: bytes, fragment: str) -> None:
    before = m.configurations()
    res = m.apply(data)
    assert not res.ok and not res.changed
    assert fragment in res.error, res.error
    assert res.num == before[-1].num
    assert m.configurations() == before


def counts(c: Configuration, live: list[int] | None = None) -> dict[int, int]:
    gids = c.group_ids() if live is None else live
    return {g: len(c.ranges_of(g)) for g in gids}


def cfg(ranges: list[tuple[str, str | None, int]], gids: list[int]) -> Configuration:
    """A valid configuration with ranges (start, end, gid), ids 1.., versions 1."""
    rs = tuple(Range(i + 1, s, e, g, 1) for i, (s, e, g) in enumerate(ranges))
    groups = freeze_groups({g: dict(members(g)) for g in gids})
    c = Configuration(7, rs, groups, len(rs) + 1)
    c.validate()
    return c


def machine_with(keys: str = "", gids: tuple[int, ...] = (1,)) -> ControllerMachine:
    m = ControllerMachine()
    for g in gids:
        ok(m, join(g))
    for k in keys:
        ok(m, split(k))
    return m


def min_moves(c: Configuration, live: list[int]) -> int:
    """The lower bound on moves for a balanced assignment (independent formula)."""
    n, g = len(c.ranges), len(live)
    q, extra = divmod(n, g)
    cnt = counts(c, live)
    orphans = sum(1 for r in c.ranges if r.gid not in live)
    over = [x for x in cnt.values() if x > q]
    return orphans + sum(x - q for x in over) - min(extra, len(over))


def balanced(c: Configuration, live: list[int]) -> bool:
    cnt = counts(c, live)
    return (max(cnt.values()) - min(cnt.values()) <= 1
            and sum(cnt.values()) == len(c.ranges))


# --- configurations ----------------------------------------------------------------


def test_initial_configuration() -> None:
    c = initial_configuration()
    c.validate()
    assert c.num == 0 and c.next_range_id == 2 and c.groups == ()
    assert c.ranges == (Range(1, "", None, 0, 1),)
    assert c.range_for("") == c.range_for("zzz") == c.ranges[0]


def test_range_contains_and_overlaps() -> None:
    r = Range(1, "b", "d", 1, 1)
    assert r.contains("b") and r.contains("c") and r.contains("cz")
    assert not r.contains("a") and not r.contains("d") and not r.contains("")
    assert Range(2, "d", None, 1, 1).contains("\U0010ffff")
    assert r.overlaps("a", "c") and r.overlaps("c", None) and r.overlaps("", None)
    assert not r.overlaps("d", None) and not r.overlaps("a", "b")
    assert not r.overlaps("c", "c") and not r.overlaps("c", "a")
    assert Range(3, "", None, 0, 1).overlaps("x", "y")
    assert Range.from_list(r.to_list()) == r


def test_utf8_byte_order_matches_str_order() -> None:
    keys = ["", "a", "\x7f", "\x80", "é", "\u07ff", "\u0800", "\uffff", "\U00010000", "z"]
    assert sorted(keys) == sorted(keys, key=lambda k: k.encode())


def test_lookups() -> None:
    c = cfg([("", "b", 1), ("b", "m", 2), ("m", None, 1)], [1, 2])
    assert c.range_for("a").id == 1 and c.range_for("b").id == 2
    assert c.range_for("lzz").id == 2 and c.range_for("m").id == 3
    assert c.range_by_id(2) == c.ranges[1] and c.range_by_id(9) is None
    assert [r.id for r in c.ranges_of(1)] == [1, 3] and c.ranges_of(5) == []
    assert c.group_ids() == [1, 2] and c.members(2) == dict(members(2))
    assert c.members(3) == {}


def test_dict_round_trip_through_json() -> None:
    c = cfg([("", "b", 1), ("b", "m", 2), ("m", None, 1)], [1, 2])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["groups"]["2"] == {"21": "10.0.2.1:7000", "22": "10.0.2.2:7000",
                                "23": "10.0.2.3:7000"}
    back = Configuration.from_dict(d)
    assert back == c and hash(back) == hash(c)
    assert back.range_for("c").id == 2
    # msgpack keeps int keys: accepted as well
    assert Configuration.from_dict(msgpack.unpackb(msgpack.packb(
        {**c.to_dict(), "groups": {g: dict(ms) for g, ms in c.groups}}),
        strict_map_key=False)) == c


def _good() -> dict[str, Any]:
    return cfg([("", "b", 1), ("b", None, 2)], [1, 2]).to_dict()


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("num"),
    lambda d: d.update(extra=1),
    lambda d: d.update(num=-1),
    lambda d: d.update(num=True),
    lambda d: d.update(num="1"),
    lambda d: d.update(ranges=[]),
    lambda d: d.update(ranges="x"),
    lambda d: d.update(ranges=[[1, "", "b", 1, 1]]),                       # last bounded
    lambda d: d.update(ranges=[[1, "a", None, 1, 1]]),                     # not from ""
    lambda d: d.update(ranges=[[1, "", "b", 1, 1], [2, "c", None, 2, 1]]),  # gap
    lambda d: d.update(ranges=[[1, "", "b", 1, 1], [1, "b", None, 2, 1]]),  # dup id
    lambda d: d.update(ranges=[[1, "", "b", 1, 1], [2, "b", None, 9, 1]]),  # unknown gid
    lambda d: d.update(ranges=[[1, "", "b", 1, 0], [2, "b", None, 2, 1]]),  # version 0
    lambda d: d.update(ranges=[[1, "", "", 1, 1], [2, "", None, 2, 1]]),    # empty range
    lambda d: d.update(ranges=[[1, "", "b", 1], [2, "b", None, 2, 1]]),
    lambda d: d.update(ranges=[[1, "", 5, 1, 1], [2, "b", None, 2, 1]]),
    lambda d: d.update(ranges=[[1, "", "b", 1.0, 1], [2, "b", None, 2, 1]]),
    lambda d: d.update(next_range_id=2),
    lambda d: d.update(groups=[]),
    lambda d: d["groups"].update({"0": {"1": "h:1"}}),
    lambda d: d["groups"].update({"x": {"1": "h:1"}}),
    lambda d: d["groups"].update({"03": {"1": "h:1"}}),
    lambda d: d["groups"].update({"3": {}}),
    lambda d: d["groups"].update({"3": {"1": ""}}),
    lambda d: d["groups"].update({"3": {"0": "h:1"}}),
    lambda d: d["groups"].update({"3": {"1": 5}}),
    lambda d: d["groups"].update({"3": ["h:1"]}),
    lambda d: d["groups"].update({3: {"1": "h:1"}, "3": {"1": "h:1"}}),
])
def test_from_dict_rejects_malformed(mutate: Any) -> None:
    d = _good()
    Configuration.from_dict(d)
    mutate(d)
    with pytest.raises(ConfigError):
        Configuration.from_dict(d)


def test_from_dict_rejects_non_mapping() -> None:
    bads: list[object] = [None, [], "x", 3]
    for bad in bads:
        with pytest.raises(ConfigError):
            Configuration.from_dict(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.fixed_dictionaries({"num": json_values, "ranges": json_values,
                              "groups": json_values, "next_range_id": json_values}))
def test_from_dict_only_raises_config_error(d: dict[str, Any]) -> None:
    try:
        Configuration.from_dict(d)
    except ConfigError:
        pass


@FAST
@given(st.lists(st.text(alphabet="abcé\U00010000", min_size=1, max_size=3), max_size=8),
       st.lists(st.text(alphabet="abcé\U00010000", max_size=4), max_size=10))
def test_range_for_matches_linear_scan(points: list[str], probes: list[str]) -> None:
    m = machine_with()
    for p in points:
        m.apply(split(p))
    c = m.latest()
    for k in probes + points:
        assert c.range_for(k) == next(r for r in c.ranges if r.contains(k))


# --- commands ----------------------------------------------------------------------

i64 = st.integers(-(2**63), 2**63 - 1)
commands = st.builds(
    CtrlCommand,
    op=st.sampled_from(CtrlOp),
    gid=i64,
    members=st.lists(st.tuples(i64, st.text(max_size=8)), max_size=4).map(tuple),
    range_id=i64,
    version=i64,
    key=st.text(max_size=8),
    moves=st.lists(st.tuples(i64, i64, i64), max_size=4).map(tuple),
)


@FAST
@given(commands)
def test_command_round_trip(cmd: CtrlCommand) -> None:
    assert CtrlCommand.decode(cmd.encode()) == cmd


@FAST
@given(st.binary(max_size=64))
def test_garbage_bytes_raise_decode_error_only(data: bytes) -> None:
    try:
        CtrlCommand.decode(data)
    except CtrlDecodeError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | i64 | st.floats() | st.text(max_size=4) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=8)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=25,
)


@FAST
@given(msgpack_values)
def test_wellformed_msgpack_of_any_shape_raises_decode_error_only(value: Any) -> None:
    try:
        CtrlCommand.decode(msgpack.packb(value, use_bin_type=True))
    except CtrlDecodeError:
        pass


@FAST
@given(commands, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_encoding_raises_decode_error_only(cmd: CtrlCommand, pos: int,
                                                     byte: int) -> None:
    data = bytearray(cmd.encode())
    data[pos % len(data)] = byte
    for candidate in (bytes(data), bytes(data[: pos % len(data)])):
        try:
            CtrlCommand.decode(candidate)
        except CtrlDecodeError:
            pass


@pytest.mark.parametrize("raw", [
    [2, 1, 1, [], 0, 0, "", []],          # future format version
    [1, 99, 1, [], 0, 0, "", []],         # unknown op
    [1, 1, True, [], 0, 0, "", []],       # bool is not an int
    [1, 1, 1, [[1]], 0, 0, "", []],
    [1, 1, 1, [[1, 2]], 0, 0, "", []],
    [1, 6, 0, [], 0, 0, "", [[1, 2]]],
    [1, 4, 0, [], 0, 0, b"k", []],
    [1, 4, 0, [], 0, 0, "k"],
    {"op": 1},
])
def test_decode_rejects_wrong_fields(raw: Any) -> None:
    with pytest.raises(CtrlDecodeError):
        CtrlCommand.decode(msgpack.packb(raw, use_bin_type=True))


def test_apply_garbage_changes_nothing() -> None:
    m = machine_with("m")
    for data in (b"", b"\xc1", b"\x93\x01\x02", msgpack.packb([1, 1]), b"\xff" * 9):
        rejected(m, data, "")
    assert not m.apply("not bytes").ok  # type: ignore[arg-type]


# --- operations --------------------------------------------------------------------


def test_first_join_takes_every_unassigned_range() -> None:
    m = ControllerMachine()
    ok(m, split("m"))
    ok(m, split("t"))
    assert all(r.gid == 0 for r in m.latest().ranges)
    res = ok(m, join(1))
    assert res.changed and res.num == 3
    c = m.latest()
    assert [(r.id, r.gid, r.version) for r in c.ranges] == [(1, 1, 3), (2, 1, 4), (3, 1, 4)]
    assert c.members(1) == dict(members(1))


def test_second_join_moves_nothing_and_rejoin_is_idempotent() -> None:
    m = machine_with("m")
    before = m.latest().ranges
    res = ok(m, join(2))
    assert res.changed and m.latest().ranges == before and m.latest().group_ids() == [1, 2]
    num = m.latest().num
    res = ok(m, join(2))
    assert not res.changed and res.num == num
    # the same members in another order are identical
    again = CtrlCommand(CtrlOp.JOIN, gid=2, members=tuple(reversed(members(2)))).encode()
    assert not ok(m, again).changed and m.latest().num == num


def test_join_with_other_members_updates_them() -> None:
    m = machine_with("m", (1, 2))
    num = m.latest().num
    new = ((7, "h7:1"), (5, "h5:1"))
    res = ok(m, CtrlCommand(CtrlOp.JOIN, gid=2, members=new).encode())
    assert res.changed and res.num == num + 1
    assert m.latest().members(2) == {5: "h5:1", 7: "h7:1"}
    assert m.latest().groups[1] == (2, ((5, "h5:1"), (7, "h7:1")))
    assert m.latest().ranges == m.query(num).ranges  # type: ignore[union-attr]


def test_members_report_updates_a_joined_group_only() -> None:
    """A group's leader reports its members after a membership change: like JOIN for a
    joined group, but a stale report cannot bring back a group that left."""
    m = machine_with("m", (1, 2))
    num = m.latest().num
    res = ok(m, CtrlCommand(CtrlOp.MEMBERS, gid=2, members=((5, "h5:1"),)).encode())
    assert res.changed and res.num == num + 1 and m.latest().members(2) == {5: "h5:1"}
    assert m.latest().ranges == m.query(num).ranges  # type: ignore[union-attr]
    same = ok(m, CtrlCommand(CtrlOp.MEMBERS, gid=2, members=((5, "h5:1"),)).encode())
    assert not same.changed
    ok(m, leave(2))
    rejected(m, CtrlCommand(CtrlOp.MEMBERS, gid=2, members=((5, "h5:1"),)).encode(),
             "not joined")
    rejected(m, CtrlCommand(CtrlOp.MEMBERS, gid=9, members=((5, "h5:1"),)).encode(),
             "not joined")


@pytest.mark.parametrize("cmd,fragment", [
    (CtrlCommand(CtrlOp.JOIN, gid=0, members=((1, "a:1"),)), "group id"),
    (CtrlCommand(CtrlOp.JOIN, gid=-3, members=((1, "a:1"),)), "group id"),
    (CtrlCommand(CtrlOp.JOIN, gid=1), "at least one member"),
    (CtrlCommand(CtrlOp.JOIN, gid=1, members=((1, "a:1"), (1, "b:1"))), "twice"),
    (CtrlCommand(CtrlOp.JOIN, gid=1, members=((0, "a:1"),)), "node id"),
    (CtrlCommand(CtrlOp.JOIN, gid=1, members=((1, ""),)), "address"),
])
def test_join_errors(cmd: CtrlCommand, fragment: str) -> None:
    rejected(ControllerMachine(), cmd.encode(), fragment)


def test_leave_errors() -> None:
    m = machine_with("m")
    rejected(m, leave(2), "unknown group 2")
    rejected(m, leave(1), "cannot remove the last group")
    rejected(ControllerMachine(), leave(1), "unknown group 1")


def test_leave_reassigns_to_fewest_then_smaller_gid() -> None:
    m = machine_with("bcdefg", (1, 2, 3, 4))
    # ranges (key order): ""(1) b c d e f g ; give 2 one range, 3 two, 4 none
    ids = [r.id for r in m.latest().ranges]
    ok(m, move(ids[1], 2))
    ok(m, move(ids[2], 3))
    ok(m, move(ids[3], 3))
    before = m.latest()
    assert counts(before) == {1: 4, 2: 1, 3: 2, 4: 0}
    res = ok(m, leave(1))
    c = m.latest()
    assert res.changed and c.group_ids() == [2, 3, 4] and c.num == before.num + 1
    got = {r.id: r.gid for r in c.ranges}
    # group 1's ranges, in key order, each to the fewest (ties: smaller gid):
    #   {2:1, 3:2, 4:0} -> 4; {2:1, 3:2, 4:1} -> 2; {2:2, 3:2, 4:1} -> 4; all 2 -> 2
    assert [got[i] for i in (ids[0], ids[4], ids[5], ids[6])] == [4, 2, 4, 2]
    for r in c.ranges:
        old = before.range_by_id(r.id)
        assert old is not None
        assert r.version == old.version + (1 if old.gid == 1 else 0)
    assert counts(c) == {2: 3, 3: 2, 4: 2}


def test_move() -> None:
    m = machine_with("m", (1, 2))
    r = m.latest().range_for("z")
    rejected(m, move(99, 2), "unknown range 99")
    rejected(m, move(r.id, 3), "unknown group 3")
    rejected(m, move(r.id, 1), "already owned by group 1")
    rejected(m, move(r.id, 2, version=r.version + 1), "version")
    res = ok(m, move(r.id, 2, version=r.version))
    assert res.changed
    moved = m.latest().range_by_id(r.id)
    assert moved == Range(r.id, r.start, r.end, 2, r.version + 1)
    ok(m, move(r.id, 1))  # version 0 = any
    assert m.latest().range_by_id(r.id) == Range(r.id, r.start, r.end, 1, r.version + 2)


def test_split() -> None:
    m = machine_with("", (1,))
    rejected(m, split(""), "already starts at")
    ok(m, split("m"))
    c = m.latest()
    assert c.ranges == (Range(1, "", "m", 1, 3), Range(2, "m", None, 1, 3))
    assert c.next_range_id == 3
    rejected(m, split("m"), "already starts at")
    ok(m, split("f"))
    c = m.latest()
    assert c.ranges == (Range(1, "", "f", 1, 4), Range(3, "f", "m", 1, 4),
                        Range(2, "m", None, 1, 3))
    assert c.next_range_id == 4


def test_merge() -> None:
    m = machine_with("fm", (1, 2))
    rejected(m, merge(""), "first range")
    rejected(m, merge("g"), "no range starts at 'g'")
    ok(m, move(m.latest().range_for("m").id, 2))
    rejected(m, merge("m"), "different groups")
    before = m.latest()
    ok(m, merge("f"))
    c = m.latest()
    left, right = before.range_for("a"), before.range_for("f")
    assert c.ranges[0] == Range(left.id, "", "m", 1, max(left.version, right.version) + 1)
    assert len(c.ranges) == 2 and c.range_by_id(right.id) is None
    assert c.next_range_id == before.next_range_id  # ids are never reused


def test_apply_plan_drops_stale_moves() -> None:
    m = machine_with("fm", (1, 2))
    c = m.latest()
    a, b, z = c.ranges
    rejected(m, apply_plan(()), "plan is empty")
    rejected(m, apply_plan(((a.id, a.version + 1, 2), (99, 1, 2), (b.id, b.version, 1),
                            (z.id, z.version, 7))), "plan is stale")
    res = ok(m, apply_plan(((a.id, a.version, 2), (b.id, b.version + 5, 2),
                            (z.id, z.version, 2), (z.id, z.version, 1))))
    assert res.changed and res.dropped == 2 and res.num == c.num + 1
    n = m.latest()
    assert [(r.gid, r.version) for r in n.ranges] == [(2, a.version + 1), (1, b.version),
                                                       (2, z.version + 1)]


def test_history_retention_and_query() -> None:
    m = ControllerMachine(history_keep=3)
    assert m.query(0) == initial_configuration() and m.query(1) is None
    assert m.query(-1) == m.latest()
    ok(m, join(1))
    for k in "bcde":
        ok(m, split(k))
    nums = [c.num for c in m.configurations()]
    assert nums == [3, 4, 5] and m.latest().num == 5
    assert m.query(2) is None and m.query(6) is None and m.query(0) is None
    assert m.query(4) is m.configurations()[1] and m.query(-5) == m.latest()
    with pytest.raises(ValueError):
        ControllerMachine(history_keep=0)


def test_load() -> None:
    src = machine_with("bcd", (1, 2))
    configs = src.configurations()
    m = ControllerMachine(history_keep=2)
    m.load(configs)
    assert m.configurations() == configs[-2:] and m.latest() == src.latest()
    ok(m, split("x"))
    assert m.latest().num == src.latest().num + 1
    before = m.configurations()
    for bad in ([], [configs[0], configs[2]], [configs[1], configs[0]],
                [Configuration(0, (), (), 1)]):
        with pytest.raises(ConfigError):
            m.load(bad)
        assert m.configurations() == before


def test_next_configuration_is_pure() -> None:
    c = cfg([("", "m", 1), ("m", None, 1)], [1])
    new = next_configuration(c, CtrlCommand(CtrlOp.SPLIT, key="f"))
    assert new is not None and new.num == c.num + 1 and c.ranges[0].end == "m"
    assert next_configuration(c, CtrlCommand(CtrlOp.JOIN, gid=1, members=members(1))) is None
    with pytest.raises(CtrlRejected):
        next_configuration(c, CtrlCommand(CtrlOp.LEAVE, gid=1))


# --- random operation sequences ---------------------------------------------------

KEYS = st.text(alphabet="abcd", max_size=3)
_join = st.tuples(st.just("join"), st.integers(1, 5), st.integers(1, 3))
_split = st.tuples(st.just("split"), KEYS)
ops = st.one_of(  # repeated branches weigh the ops that build state
    _join, _join,
    _split, _split, _split,
    st.tuples(st.just("leave"), st.integers(0, 5)),
    st.tuples(st.just("move"), st.integers(0, 40), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("move"), st.integers(0, 40), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("merge"), st.integers(0, 40)),
    st.tuples(st.just("merge"), KEYS),
    st.tuples(st.just("plan"), st.integers(0, 31)),
    st.tuples(st.just("plan"), st.just(0)),
    st.tuples(st.just("stale"), st.integers(0, 40), st.integers(0, 5)),
    st.tuples(st.just("garbage"), st.binary(max_size=6)),
)


def _gid(c: Configuration, i: int) -> int:
    """Mostly a joined group (by index); past the end, a gid that may not exist."""
    gids = c.group_ids()
    return gids[i] if i < len(gids) else i + 1


def _encode_op(c: Configuration, op: tuple[Any, ...]) -> bytes:
    kind = op[0]
    if kind == "join":
        return join(op[1], op[2])
    if kind == "leave":
        return leave(_gid(c, op[1]))
    if kind == "move":
        r = c.ranges[op[1] % len(c.ranges)]
        return move(r.id, _gid(c, op[2]), r.version if op[3] else 0)
    if kind == "split":
        return split(op[1])
    if kind == "merge":  # by index: the start of an existing range (or "", an error)
        return merge(c.ranges[op[1] % len(c.ranges)].start if isinstance(op[1], int)
                     else op[1])
    if kind == "plan":  # plan over a subset of the groups (a bitmask), or all of them
        gids = c.group_ids()
        live = [g for i, g in enumerate(gids) if op[1] >> i & 1] or None
        return apply_plan(plan(c, groups=live).as_moves())
    if kind == "stale":
        r = c.ranges[op[1] % len(c.ranges)]
        return apply_plan(((r.id, r.version + 1, _gid(c, op[2])),))
    return bytes(op[1])


def _check_step(old: Configuration, new: Configuration, res: CtrlResult) -> None:
    new.validate()
    if res.changed:
        assert res.ok and new.num == old.num + 1 == res.num
    else:
        assert new == old and res.num == old.num
    if new.groups:
        assert all(r.gid in new.group_ids() for r in new.ranges)
    for r in new.ranges:
        prev = old.range_by_id(r.id)
        assert r.id < new.next_range_id
        if prev is None:
            assert r.id >= old.next_range_id  # new ids only, never reused
        elif (prev.start, prev.end, prev.gid) != (r.start, r.end, r.gid):
            assert r.version > prev.version
        else:
            assert r.version >= prev.version


@FAST
@given(st.booleans(), st.lists(ops, min_size=10, max_size=40))
def test_random_sequences_keep_invariants(setup: bool, seq: list[tuple[Any, ...]]) -> None:
    m = ControllerMachine(history_keep=10)
    replica = ControllerMachine(history_keep=10)
    prefix = [("split", k) for k in "bcdfhk"] + [("join", 1, 3), ("join", 2, 3)]
    for op in (prefix if setup else []) + seq:
        old = m.latest()
        data = _encode_op(old, op)
        res = m.apply(data)
        assert replica.apply(data) == res  # determinism: replicas agree
        _check_step(old, m.latest(), res)
        if op[0] == "plan" and res.ok and op[1] == 0:
            assert balanced(m.latest(), m.latest().group_ids())
    assert replica.configurations() == m.configurations()
    nums = [c.num for c in m.configurations()]
    assert nums == list(range(nums[0], nums[0] + len(nums))) and len(nums) <= 10


@FAST
@given(st.lists(KEYS, max_size=12), st.lists(st.integers(1, 5), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 40), st.integers(1, 5)), max_size=10),
       st.integers(1, 5))
def test_join_or_leave_then_plan_balances(points: list[str], gids: list[int],
                                          moves: list[tuple[int, int]], extra: int) -> None:
    m = ControllerMachine()
    for point in points:
        m.apply(split(point))
    for g in gids:
        ok(m, join(g))
    for i, to in moves:  # skew the assignment
        c = m.latest()
        m.apply(move(c.ranges[i % len(c.ranges)].id, to))
    for step in (join(max(gids) + extra), leave(gids[0])):
        m.apply(step)
        c = m.latest()
        p = plan(c)
        assert len(p.moves) == min_moves(c, c.group_ids())
        if p.moves:
            ok(m, apply_plan(p.as_moves()))
        assert balanced(m.latest(), m.latest().group_ids())
        assert plan(m.latest()).moves == ()


# --- the planner -------------------------------------------------------------------


@st.composite
def planner_inputs(draw: st.DrawFn, max_n: int = 12, max_groups: int = 4, min_groups: int = 1,
                   all_live: bool = False,
                   ) -> tuple[Configuration, dict[int, RangeSize], list[int]]:
    """A valid configuration (some ranges maybe unassigned), sizes, and live groups
    (usually all groups; sometimes a subset, given in any order with duplicates)."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(min_groups, max_groups))
    gids = sorted(draw(st.lists(st.integers(1, 6), min_size=k, max_size=k, unique=True)))
    owners = draw(st.lists(st.sampled_from([0, *gids]), min_size=n, max_size=n))
    if all(o == 0 for o in owners) or draw(st.booleans()):
        owners = [o or gids[0] for o in owners]  # usually everything assigned
    starts = [""] + [f"k{i:02d}" for i in range(1, n)]
    ranges = tuple(
        Range(10 + 3 * i, s, starts[i + 1] if i + 1 < n else None, owners[i],
              draw(st.integers(1, 5)))
        for i, s in enumerate(starts))
    c = Configuration(draw(st.integers(0, 50)), ranges,
                      freeze_groups({g: dict(members(g)) for g in gids}), 10 + 3 * n)
    c.validate()
    sizes = {r.id: RangeSize(draw(st.integers(0, 3)), draw(st.integers(0, 20)))
             for r in ranges if draw(st.integers(0, 3)) > 0}
    if all_live or draw(st.integers(0, 2)) > 0:
        live = draw(st.permutations(gids))
    else:
        live = draw(st.lists(st.sampled_from(gids), min_size=1, max_size=6))
    return c, sizes, list(live)


@FAST
@given(planner_inputs(), st.randoms(use_true_random=False))
def test_plan_is_minimal_balanced_deterministic_and_idempotent(
        inp: tuple[Configuration, dict[int, RangeSize], list[int]], rnd: Any) -> None:
    c, sizes, live_list = inp
    live = sorted(set(live_list))
    p = plan(c, sizes, groups=live_list)
    assert p.num == c.num
    assert len(p.moves) == min_moves(c, live)
    # deterministic, independent of the order (and duplicates) of the groups given,
    # and of the insertion order of the sizes mapping
    shuffled = list(live_list) + live_list[:1]
    rnd.shuffle(shuffled)
    size_items = list(sizes.items())
    rnd.shuffle(size_items)
    assert plan(c, dict(size_items), groups=shuffled) == p
    assert plan(c, sizes, groups=live) == p
    for mv in p.moves:
        r = c.range_by_id(mv.range_id)
        assert r is not None and mv.version == r.version and mv.from_gid == r.gid
        assert (mv.start, mv.end) == (r.start, r.end) and mv.to_gid in live
        assert mv.to_gid != mv.from_gid
        s = sizes.get(r.id, RangeSize())
        assert (mv.keys, mv.bytes) == (s.keys, s.bytes)
    assert len({mv.range_id for mv in p.moves}) == len(p.moves)
    assert p.bytes == sum(mv.bytes for mv in p.moves)
    assert p.keys == sum(mv.keys for mv in p.moves)
    assert p.est_seconds == p.bytes / 50e6
    after = apply_plan_to(c, p)
    after.validate()
    assert after.num == (c.num + 1 if p.moves else c.num)
    assert balanced(after, live)
    assert all(r.gid in live for r in after.ranges)
    assert plan(after, sizes, groups=live).moves == ()
    # the machine makes exactly the same configuration
    m = ControllerMachine()
    m.load([c])
    if p.moves:
        ok(m, apply_plan(p.as_moves()))
        assert m.latest() == after


def _brute_force_best(c: Configuration, sizes: dict[int, RangeSize],
                      live: list[int]) -> tuple[int, int, int]:
    """Min (moves, bytes, keys) over every balanced assignment of the ranges."""
    best: tuple[int, int, int] | None = None
    n, g = len(c.ranges), len(live)
    q = n // g
    for owners in itertools.product(live, repeat=n):
        cnt = [owners.count(x) for x in live]
        if min(cnt) < q or max(cnt) > q + 1:
            continue
        moved = [r for r, o in zip(c.ranges, owners, strict=True) if r.gid != o]
        cost = (len(moved), sum(sizes.get(r.id, RangeSize()).bytes for r in moved),
                sum(sizes.get(r.id, RangeSize()).keys for r in moved))
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@settings(max_examples=100, deadline=None)
@given(planner_inputs(max_n=7, max_groups=3, min_groups=2, all_live=True))
def test_plan_copies_the_least_data(
        inp: tuple[Configuration, dict[int, RangeSize], list[int]]) -> None:
    c, sizes, live_list = inp
    live = sorted(set(live_list))
    p = plan(c, sizes, groups=live)
    assert (len(p.moves), p.bytes, p.keys) == _brute_force_best(c, sizes, live)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(2, 2, 0), (3, 3, 1), (4, 3, 0), (3, 3, 0), (2, 2, 1, 0), (3, 2, 2, 0)]),
       st.randoms(use_true_random=False),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20)), min_size=7, max_size=7))
def test_plan_gives_the_extra_slots_to_the_costly_groups(
        shape: tuple[int, ...], rnd: Any, raw_sizes: list[tuple[int, int]]) -> None:
    """More over-full groups than ``n % g`` slots: which ones keep the extra range."""
    owners = [g + 1 for g, cnt in enumerate(shape) for _ in range(cnt)]
    rnd.shuffle(owners)
    starts = [""] + [f"k{i}" for i in range(1, len(owners))]
    c = cfg([(st_, starts[i + 1] if i + 1 < len(owners) else None, o)
             for i, (st_, o) in enumerate(zip(starts, owners, strict=True))],
            list(range(1, len(shape) + 1)))
    sizes = {r.id: RangeSize(*raw_sizes[i]) for i, r in enumerate(c.ranges)}
    p = plan(c, sizes)
    assert (len(p.moves), p.bytes, p.keys) == _brute_force_best(c, sizes, c.group_ids())


def test_plan_prefers_small_ranges_and_the_extra_slot_goes_to_the_costly_group() -> None:
    c = cfg([("", "b", 1), ("b", "c", 1), ("c", "d", 1), ("d", "e", 2), ("e", "f", 2),
             ("f", "g", 2), ("g", None, 3)], [1, 2, 3])
    # 7 ranges over 3 groups: 3,2,2. Groups 1 and 2 are both at 3; one keeps 3.
    sizes = {1: RangeSize(5, 500), 2: RangeSize(1, 100), 3: RangeSize(9, 900),
             4: RangeSize(2, 200), 5: RangeSize(3, 300), 6: RangeSize(1, 50)}
    p = plan(c, sizes, bytes_per_s=100.0)
    # group 1's cheapest is id 2 (100 bytes), group 2's is id 6 (50): moving id 6 wins
    assert [(mv.range_id, mv.from_gid, mv.to_gid) for mv in p.moves] == [(6, 2, 3)]
    assert p.bytes == 50 and p.keys == 1 and p.est_seconds == 0.5
    d = json.loads(json.dumps(p.to_dict()))
    assert d["moves"][0] == {"range_id": 6, "version": 1, "start": "f", "end": "g",
                             "from_gid": 2, "to_gid": 3, "keys": 1, "bytes": 50}
    assert p.as_moves() == ((6, 1, 3),)


def test_plan_drains_groups_left_out_and_assigns_unassigned() -> None:
    c = cfg([("", "h", 1), ("h", "p", 2), ("p", None, 2)], [1, 2, 3])
    p = plan(c, groups=[1, 3])
    after = apply_plan_to(c, p)
    assert after.ranges_of(2) == [] and balanced(after, [1, 3])
    m = ControllerMachine()
    m.load([after])
    ok(m, leave(2))
    assert m.latest().ranges == after.ranges  # nothing left to reassign
    # unassigned ranges (a configuration before the first join, seen with groups)
    u = Configuration(0, (Range(1, "", "m", 0, 1), Range(2, "m", None, 0, 1)),
                      freeze_groups({4: {1: "a:1"}, 5: {2: "b:1"}}), 3)
    u.validate()
    assert [(mv.range_id, mv.from_gid, mv.to_gid) for mv in plan(u).moves] == [(1, 0, 4),
                                                                              (2, 0, 5)]


def test_plan_edge_cases() -> None:
    assert plan(initial_configuration()) == Plan(0, (), 0, 0, 0.0)
    c = cfg([("", None, 1)], [1])
    with pytest.raises(ValueError):
        plan(c, groups=[9])
    with pytest.raises(ValueError):
        plan(c, bytes_per_s=0)
    assert plan(c, groups=[]).moves == ()
    assert apply_plan_to(c, plan(c)) is c
