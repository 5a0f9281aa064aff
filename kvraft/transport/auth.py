"""Who may call what: one check in front of every route of a node.

A request is one of these principals, by what it carries:

- **peer**: the cluster secret (``X-Kvraft-Secret``) and, with TLS, a node certificate
  signed by the cluster CA. Nodes calling each other: the Raft and snapshot streams and
  range transfers. Everything is allowed.
- **admin**, **write**, **read**: a client token (``Authorization: Bearer <token>``),
  looked up by its SHA-256 in the controller's replicated token table (every node
  enforces the same set). The cluster secret without a node certificate (an operator
  on a TLS cluster) is admin.
- **anonymous**: nothing. With ``auth`` on, it may only reach ``/health``; with it off
  (``--insecure`` clusters), it may read and write, but not administer.

``admin`` covers backups, membership, the controller's commands, tokens, the whole
status document (``read`` sees who leads and each replica's indexes) and fault injection (which exists only on a node started with
``--enable-fault-injection``); ``write`` covers ``read``. A call without valid credentials gets 401, one
whose principal is below the route's role 403, and nothing happens. Tokens and the
secret never appear in an answer or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from enum import IntEnum
from typing import Any

from aiohttp import web

from kvraft.transport import tls as tlsmod

SECRET_HEADER = "X-Kvraft-Secret"


class Role(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3
    PEER = 4

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            r = cls[name.upper()]
        except KeyError:
            raise ValueError(f"role must be read, write or admin, got {name!r}") from None
        if r not in (cls.READ, cls.WRITE, cls.ADMIN):
            raise ValueError(f"role must be read, write or admin, got {name!r}")
        return r


# The request's role, under a typed key where aiohttp has them (3.13+; a string before).
_RequestKey: Any = getattr(web, "RequestKey", None)
ROLE_KEY: Any = _RequestKey("kvraft.role", Role) if _RequestKey else "kvraft.role"


ROLE_NAMES = ("read", "write", "admin")

ROUTES: dict[tuple[str, str], Role] = {
    ("GET", "/health"): Role.NONE,
    ("GET", "/v1/kv/{key}"): Role.READ,
    ("GET", "/v1/scan"): Role.READ,
    ("GET", "/v1/shards"): Role.READ,
    ("GET", "/v1/ctrl/config"): Role.READ,
    ("GET", "/v1/stream"): Role.READ,  # each write on the stream needs write
    ("GET", "/metrics"): Role.READ,
    ("PUT", "/v1/kv/{key}"): Role.WRITE,
    ("DELETE", "/v1/kv/{key}"): Role.WRITE,
    ("POST", "/v1/append/{key}"): Role.WRITE,
    ("GET", "/v1/status"): Role.READ,  # the full document for admin, a summary below
    ("GET", "/v1/admin/members"): Role.ADMIN,
    ("POST", "/v1/admin/members"): Role.ADMIN,
    ("POST", "/v1/admin/transfer-leader"): Role.ADMIN,
    ("POST", "/v1/admin/backup"): Role.ADMIN,
    ("GET", "/v1/ctrl/tokens"): Role.ADMIN,
    ("POST", "/v1/ctrl/command"): Role.ADMIN,
    ("POST", "/v1/ctrl/plan"): Role.ADMIN,
    ("GET", "/v1/internal/stats"): Role.ADMIN,
    ("POST", "/v1/internal/pull"): Role.PEER,
    ("POST", "/v1/internal/installed"): Role.PEER,
    ("GET", "/raft/v1/stream"): Role.PEER,
    ("POST", "/raft/v1/snapshot"): Role.PEER,
    ("GET", "/v1/admin/faults"): Role.ADMIN,
    ("PUT", "/v1/admin/faults"): Role.ADMIN,
    ("DELETE", "/v1/admin/faults"): Role.ADMIN,
}
"""The role each route needs (HEAD as GET). A route missing here is refused (500 in
tests: every route must be listed)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    """A fresh client token: 256 random bits (only its hash is ever stored)."""
    return "kvt_" + secrets.token_urlsafe(32)


class Guard:
    """The principal of a request, and the middleware that enforces :data:`ROUTES`.

    ``tokens`` gives the current token table, ``{sha256: role name}`` (the node's copy
    of the controller's, refreshed with each poll)."""

    def __init__(self, secret: str, tls: tlsmod.TLS | None, *, required: bool,
                 tokens: Callable[[], Mapping[str, str] | None] = dict) -> None:
        self.secret = secret.encode()
        self.tls = tls
        self.required = required
        self.tokens = tokens
        """The token table, or None while this node has not loaded it yet (just
        started): then an unknown token gets a 503 to retry elsewhere, not a 401."""
        self.denied = 0

    def role(self, request: web.Request) -> Role | None:
        """The request's role, or None for credentials that are wrong (401)."""
        got = request.headers.get(SECRET_HEADER)
        if got is not None:
            if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), self.secret):
                return None
            if self.tls is None or tlsmod.peer_node_id(request) is not None:
                return Role.PEER
            return Role.ADMIN
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            table = self.tokens()
            if table is None:
                raise _refusal(503, "unavailable", "this node has not loaded the token table "
                               "from the controller yet; retry (another node)")
            name = table.get(token_hash(token.strip()))  # (hashed with surrogateescape)
            return None if name is None else Role.named(name)
        return Role.NONE if self.required else Role.WRITE

    def check(self, request: web.Request, need: Role) -> Role:
        """The request's role if it may do what needs ``need``; raises 401/403."""
        role = self.role(request)
        if role is None:
            self.denied += 1
            raise _refusal(401, "unauthorized", "the credentials were refused (unknown or "
                           "revoked token, or a wrong cluster secret)")
        if role < need:
            self.denied += 1
            anonymous = (SECRET_HEADER not in request.headers
                         and "Authorization" not in request.headers)
            if anonymous:  # (with auth off, anonymous callers may read and write)
                raise _refusal(401, "unauthorized", "this call needs a token "
                               f"(Authorization: Bearer ...) with the {_name(need)} role")
            raise _refusal(403, "forbidden", f"this call needs the {_name(need)} role; these "
                           f"credentials have {_name(role)}")
        return role

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def guard(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            route = request.match_info.route
            resource = route.resource
            if resource is None:  # no such route: let aiohttp answer 404/405
                return await handler(request)
            method = "GET" if request.method == "HEAD" else request.method
            need = ROUTES.get((method, resource.canonical))
            if need is None:
                raise _refusal(500, "internal", "route without a role")
            request[ROLE_KEY] = self.check(request, need)
            return await handler(request)
        return guard


def _name(role: Role) -> str:
    return {Role.NONE: "no", Role.PEER: "peer (a cluster node's)"}.get(role, role.name.lower())


def _refusal(status: int, code: str, message: str) -> web.HTTPException:
    cls: type[web.HTTPException] = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
                                    503: web.HTTPServiceUnavailable}.get(
        status, web.HTTPInternalServerError)
    return cls(text=json.dumps({"error": code, "message": message}),
               content_type="application/json")


def request_role(request: web.Request) -> Role:
    r: Any = request.get(ROLE_KEY, Role.NONE)
    return Role(r)
