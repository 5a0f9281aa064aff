"""Commands of the key-value state machine and their binary encoding.

A command travels in a Raft entry's ``data`` as msgpack:
``[version, op, key, value, client_id, seq, ack_below, num]`` (``num``: the configuration
number the client routed by; version 1 had no ``num``). ``client_id`` may be empty
(no session: the command is applied every time it is committed). With a session, the
client promises it has received the answers of all its commands with ``seq < ack_below``,
so the state machine may forget their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

FORMAT_VERSION = 2


class Op(IntEnum):
    PUT = 1
    APPEND = 2
    DELETE = 3


class CommandDecodeError(ValueError):
    """The bytes are not a command this version understands."""


@dataclass(frozen=True, slots=True)
class Command:
    op: Op
    key: str
    value: str = ""
    client_id: str = ""
    seq: int = 0
    ack_below: int = 0
    num: int = 0

    def encode(self) -> bytes:
        out = msgpack.packb(
            [FORMAT_VERSION, int(self.op), self.key, self.value, self.client_id, self.seq,
             self.ack_below, self.num],
            use_bin_type=True,
        )
        assert isinstance(out, bytes)
        return out

    @staticmethod
    def decode(data: bytes) -> Command:
        try:
            raw: Any = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CommandDecodeError(f"malformed command: {e}") from e
        return Command.from_raw(raw)

    @staticmethod
    def from_raw(raw: Any) -> Command:
        """A command from its unpacked msgpack form; raises CommandDecodeError."""
        try:
            if isinstance(raw, list) and raw and raw[0] == 1:
                version, op, key, value, client_id, seq, ack_below = raw
                num = 0
            else:
                version, op, key, value, client_id, seq, ack_below, num = raw
        except (ValueError, TypeError) as e:
            raise CommandDecodeError(f"malformed command: {e}") from e
        if version not in (1, FORMAT_VERSION):
            raise CommandDecodeError(f"unknown command format version {version!r}")
        if not (isinstance(key, str) and isinstance(value, str) and isinstance(client_id, str)
                and isinstance(seq, int) and isinstance(ack_below, int)
                and isinstance(num, int)):
            raise CommandDecodeError("malformed command fields")
        try:
            return Command(Op(op), key, value, client_id, seq, ack_below, num)
        except ValueError as e:
            raise CommandDecodeError(f"unknown op {op!r}") from e
