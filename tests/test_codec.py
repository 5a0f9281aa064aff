"""Peer wire encoding: round trips, and malformed frames are refused cleanly."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.types import ConfState, Entry, Message, MsgType, SnapshotMeta
from kvraft.transport.codec import WireError, decode_frame, encode_frame


def test_round_trip() -> None:
    msgs = [
        Message(MsgType.APP, to=2, frm=1, term=3, log_term=2, index=7, commit=6, ctx=9,
                entries=[Entry(8, 3, b"a"), Entry(9, 3, b"", 1)]),
        Message(MsgType.APP_RESP, to=1, frm=2, term=3, index=7, reject=True, hint=5, log_term=2),
        Message(MsgType.SNAP, to=3, frm=1, term=3,
                snapshot=SnapshotMeta(100, 2, ConfState(frozenset({1, 2, 3})))),
    ]
    group, out = decode_frame(encode_frame(7, msgs))
    assert group == 7 and out == msgs


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", msgpack.packb([2, 1, []]), msgpack.packb([1, 1, [[99] * 11]]),
    msgpack.packb([1, 1, [[-1] * 12]]),
    msgpack.packb([1, 1, [[5, 1, 2, 3, 0, 0, 0, False, 0, 0, [[1, 1, 0, "str"]], None]]]),
    msgpack.packb({"a": 1}), msgpack.packb([1, "g", []]),
    msgpack.packb([1, 1, [[9, 1, 2, 3, 0, 0, 0, False, 0, 0, [], [1, 1, 5, []]]]]),
])
def test_malformed_frames(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_frame(raw)


def test_a_message_of_a_newer_type_is_skipped_not_the_frame() -> None:
    """A message type a newer version added is dropped alone (as a lost message), so a
    rolling upgrade costs that message, not the appends in the same frame."""
    ok = Message(MsgType.APP_RESP, to=1, frm=2, term=3, index=7)
    frame = msgpack.unpackb(encode_frame(7, [ok, ok]))
    frame[2][1] = [99, 1, 2, 3, 0, 0, 0, False, 0, 0, [], None]
    assert decode_frame(msgpack.packb(frame)) == (7, [ok])
    # Malformed in any other way, it still refuses the frame.
    frame[2][1] = [99, 1, 2, 3, 0, 0, 0, False, 0, 0]
    with pytest.raises(WireError):
        decode_frame(msgpack.packb(frame))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_wire_error(raw: bytes) -> None:
    try:
        decode_frame(raw)
    except WireError:
        pass
