"""Checking HOST:PORT addresses given by operators, peers and clients."""

from __future__ import annotations

import re

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def split_hostport(addr: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (a name, an IPv4 address or ``[IPv6]``); raises
    ValueError with a message for anything else."""
    host, sep, port = addr.rpartition(":")
    if (not sep or not _HOST.match(host) or not port.isascii() or not port.isdigit()
            or not 0 < int(port) < 65536):
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)
