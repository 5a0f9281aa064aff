"""Exceptions of kvraft's public API, split by whose fault it was.

- :class:`InvalidArgument` (and :class:`TooLarge`): the caller's request is wrong;
  retrying the same request will fail the same way.
- :class:`Unavailable`: the cluster could not serve the request before the deadline
  (no leader, no quorum, nodes down). :class:`OutcomeUnknown` is the subclass for writes
  whose fate is not known: the write may or may not have been applied.
- :class:`SessionExpired`: the server forgot this client's session, so a retried write
  cannot be deduplicated; its outcome is unknown.
- :class:`ServerError`: the server failed in a way that is not the caller's fault.
"""

from __future__ import annotations


class KvraftError(Exception):
    """Base class of every kvraft exception."""


class InvalidArgument(KvraftError, ValueError):
    """The request is malformed (bad key, bad value, bad option)."""


class TooLarge(InvalidArgument):
    """A key or value exceeds the configured size limit."""


class NotFound(KvraftError):
    """Raised by operations that require the key to exist (``get`` returns None instead)."""


class Unavailable(KvraftError):
    """The cluster could not serve the request before the deadline."""


class OutcomeUnknown(Unavailable):
    """A write timed out or its leader was lost: it may or may not have taken effect."""


class NotLeader(Unavailable):
    """The contacted node is not the leader; ``leader`` is the leader's address if known."""

    def __init__(self, message: str = "not the leader", leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class WrongGroup(Unavailable):
    """The key's range is not served by the group that was asked (SHARDING.md rule 2).

    ``num`` is the configuration number of the group that refused; ``gid`` the group
    that owns the key by the newest configuration the node knows, and ``redirect`` the
    address of a member of that group when it is not on the contacted node.
    """

    def __init__(self, message: str, *, num: int, gid: int = 0,
                 redirect: str | None = None) -> None:
        super().__init__(message)
        self.num = num
        self.gid = gid
        self.redirect = redirect


class NotReady(Unavailable):
    """The node cannot answer yet (for example a range not frozen here yet); retry."""


class Gone(KvraftError):
    """What was asked for is no longer (or never was) held here, and will not be."""


class SessionExpired(OutcomeUnknown):
    """The server no longer remembers this client's session."""


class Unauthorized(KvraftError):
    """The node refused the credentials: no token, an unknown or revoked one, or a wrong
    cluster secret (401). Not retried."""


class Forbidden(Unauthorized):
    """The token's role does not allow the call (403). Not retried."""


class ServerError(KvraftError):
    """The server reported an internal error."""


__all__ = [
    "Gone",
    "InvalidArgument",
    "KvraftError",
    "NotFound",
    "NotLeader",
    "OutcomeUnknown",
    "ServerError",
    "SessionExpired",
    "NotReady",
    "TooLarge",
    "Unavailable",
    "WrongGroup",
]
