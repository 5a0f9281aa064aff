"""Binary encoding of Raft messages between nodes (msgpack, versioned).

A frame carries the messages of one group: ``[WIRE_VERSION, group_id, [msg, ...]]``.
Decoding validates shapes and types and raises :class:`WireError` on anything else, so
a malformed frame from a peer is dropped, never allowed to crash the node.
"""

from __future__ import annotations

from typing import Any

import msgpack

from kvraft.raft.types import ConfState, Entry, EntryKind, Message, MsgType, SnapshotMeta

WIRE_VERSION = 1


class WireError(ValueError):
    """A frame that is not valid kvraft peer traffic."""


def _enc_msg(m: Message) -> list[Any]:
    snap = None
    if m.snapshot is not None:
        s = m.snapshot
        snap = [s.index, s.term, sorted(s.conf.voters), sorted(s.conf.learners),
                [list(a) for a in s.conf.addresses]]
    return [int(m.type), m.to, m.frm, m.term, m.log_term, m.index, m.commit, m.reject,
            m.hint, m.ctx, [[e.index, e.term, e.kind, e.data] for e in m.entries], snap]


def encode_frame(group_id: int, msgs: list[Message]) -> bytes:
    out = msgpack.packb([WIRE_VERSION, group_id, [_enc_msg(m) for m in msgs]],
                        use_bin_type=True)
    assert isinstance(out, bytes)
    return out


MAX_WIRE_INT = 1 << 62
"""Every integer of a message (terms, indexes, ids) is in ``[0, 2**62)``: a term near
2**64 would stop the replica that adopts it (SQLite and the entry checksum take 64-bit
values), so such a frame is refused instead."""


def _int(v: Any) -> int:
    if type(v) is not int:
        raise WireError(f"expected int, got {type(v).__name__}")
    if not 0 <= v < MAX_WIRE_INT:
        raise WireError(f"integer {v} out of range")
    return v


def _dec_msg(raw: Any) -> Message:
    if not isinstance(raw, list) or len(raw) != 12:
        raise WireError("message is not a 12-element list")
    t, to, frm, term, log_term, index, commit, reject, hint, ctx, ents, snap = raw
    try:
        mtype = MsgType(_int(t))
    except ValueError as e:
        raise WireError(f"unknown message type {t!r}") from e
    entries = []
    if not isinstance(ents, list):
        raise WireError("entries is not a list")
    for e in ents:
        if not isinstance(e, list) or len(e) != 4 or not isinstance(e[3], bytes):
            raise WireError("malformed entry")
        kind = _int(e[2])
        if kind not in (EntryKind.NORMAL, EntryKind.CONF):
            raise WireError(f"unknown entry kind {kind}")
        entries.append(Entry(_int(e[0]), _int(e[1]), e[3], kind))
    snapshot = None
    if snap is not None:
        if (not isinstance(snap, list) or len(snap) not in (4, 5) or not isinstance(snap[2], list)
                or not isinstance(snap[3], list)):
            raise WireError("malformed snapshot meta")
        addrs = snap[4] if len(snap) == 5 else []
        if not isinstance(addrs, list) or not all(
                isinstance(a, list) and len(a) == 2 and isinstance(a[1], str) for a in addrs):
            raise WireError("malformed member addresses")
        conf = ConfState(frozenset(_int(v) for v in snap[2]), frozenset(_int(v) for v in snap[3]),
                         tuple(sorted((_int(a[0]), a[1]) for a in addrs)))
        snapshot = SnapshotMeta(_int(snap[0]), _int(snap[1]), conf)
    return Message(mtype, _int(to), _int(frm), _int(term), _int(log_term), _int(index),
                   _int(commit), bool(reject), _int(hint), _int(ctx), entries, snapshot)


def decode_frame(data: bytes, max_items: int = 200_000) -> tuple[int, list[Message]]:
    """The group and messages of a frame; raises WireError, never anything else. At
    most ``max_items`` messages in the frame, and entries in a message."""
    try:
        raw = msgpack.unpackb(data, raw=False, max_array_len=max_items, max_map_len=0,
                              max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types
        raise WireError(f"undecodable frame: {e}") from e
    if not isinstance(raw, list) or len(raw) != 3:
        raise WireError("frame is not a 3-element list")
    version, group, msgs = raw
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version!r}")
    if not isinstance(msgs, list):
        raise WireError("messages is not a list")
    return _int(group), [_dec_msg(m) for m in msgs if not _newer_type(m)]


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


def _newer_type(raw: Any) -> bool:
    """A well-formed message of a type this version does not know (one a newer version
    added) is skipped, as if lost, so that the rest of its frame still counts: a node
    sent a new request during a rolling upgrade costs one message, not a whole frame."""
    return (isinstance(raw, list) and len(raw) == 12 and type(raw[0]) is int
            and 0 <= raw[0] < MAX_WIRE_INT and raw[0] not in _KNOWN_TYPES)
