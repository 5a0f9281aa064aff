"""The client HTTP API (JSON, curl-friendly) and its error mapping.

Routes (``{key}`` is the URL-encoded key; it may contain ``/``):

- ``GET    /v1/kv/{key}``      -> 200 ``{"key", "value"}``; 404 if absent
  (``?read=follower``: a follower serves it too, see below)
- ``PUT    /v1/kv/{key}``      body = the value (raw UTF-8, or JSON ``{"value": ...}``)
- ``POST   /v1/append/{key}``  body as for PUT; appends (creates the key if absent)
- ``DELETE /v1/kv/{key}``      -> 200 ``{"deleted": bool}``
- ``GET    /v1/status``        this node's replicas: role, term, commit, applied, leader
- ``GET    /health``

Writes may carry a client session in headers (``X-Kvraft-Client``, ``X-Kvraft-Seq``,
``X-Kvraft-Ack``) so that a retried write takes effect once. A node that is not the
leader answers ``307`` with the leader's URL in ``Location`` (``curl -L`` follows it)
and in the JSON body. Reads are linearizable either way: with ``?read=follower`` a
follower (or learner) of the key's group serves the read itself, once its leader has
confirmed a read index (with a quorum round, or under its lease) and the follower has
applied that far; it redirects only when it knows no leader or its leader refused.
Every error has a JSON body ``{"error": code, "message": ...}``;
all exceptions are mapped to status codes in :func:`error_response`, and nothing a
client sends can crash the node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from kvraft import errors
from kvraft.config import Limits
from kvraft.kv.commands import Command, Op
from kvraft.kv.machine import Result, Status
from kvraft.transport.auth import Role, request_role

log = logging.getLogger("kvraft.http")

CLIENT_HEADER = "X-Kvraft-Client"
SEQ_HEADER = "X-Kvraft-Seq"
ACK_HEADER = "X-Kvraft-Ack"
TIMEOUT_HEADER = "X-Kvraft-Timeout-Ms"
LEADER_HEADER = "X-Kvraft-Leader"
CONFIG_HEADER = "X-Kvraft-Config"
"""The configuration number the client routed the request by (a hint to poll)."""


class KVService(Protocol):
    """What the HTTP layer needs from the node (implemented by the runtime)."""

    async def get(self, key: str, *, timeout_s: float, num: int = 0,
                  follower: bool = False) -> str | None: ...
    async def write(self, cmd: Command, *, timeout_s: float) -> Result: ...
    def status(self) -> dict[str, Any]: ...


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


def error_doc(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The one place where exceptions become status codes and error bodies (HTTP and
    the client stream alike)."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, errors.NotLeader):
        if exc.leader:
            return 307, {"error": "not_leader", "leader": exc.leader, "message": msg}
        return 503, {"error": "no_leader", "message": msg}
    if isinstance(exc, errors.WrongGroup):
        body = {"error": "wrong_group", "num": exc.num, "group": exc.gid, "message": msg}
        if exc.redirect:
            body["redirect"] = exc.redirect
            return 307, body
        return 421, body
    for cls, status, code in _ERRORS:
        if isinstance(exc, cls):
            return status, {"error": code, "message": msg}
    log.exception("internal error", exc_info=exc)
    return 500, {"error": "internal", "message": msg}


_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.NotReady, 409, "not_ready"), (errors.Gone, 410, "gone"),
    (errors.NotFound, 404, "not_found"), (errors.TooLarge, 413, "too_large"),
    (errors.InvalidArgument, 400, "bad_request"),
    (errors.SessionExpired, 409, "session_expired"),
    (errors.OutcomeUnknown, 503, "outcome_unknown"), (errors.Unavailable, 503, "unavailable"))


def error_response(exc: BaseException, request: web.Request | None = None) -> web.Response:
    """:func:`error_doc` as an HTTP response (a redirect carries ``Location``)."""
    status, body = error_doc(exc)
    target = body.get("leader") or body.get("redirect")
    if status != 307 or not isinstance(target, str):
        return _json(status, body)
    scheme = request.scheme if request is not None else "http"
    headers = {"Location": f"{scheme}://{target}{request.path_qs if request is not None else ''}"}
    if "leader" in body:
        headers[LEADER_HEADER] = target
    return _json(status, body, headers)


def check_key(limits: Limits, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise errors.InvalidArgument("empty key")
    if len(key.encode("utf-8", "surrogatepass")) > limits.max_key_bytes:
        raise errors.TooLarge(f"key longer than {limits.max_key_bytes} bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument("key is not valid UTF-8") from None
    return key


def check_value(limits: Limits, value: object) -> str:
    if not isinstance(value, str):
        raise errors.InvalidArgument("value must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.InvalidArgument("value is not valid UTF-8") from None
    if size > limits.max_value_bytes:
        raise errors.TooLarge(f"value larger than {limits.max_value_bytes} bytes")
    return value


def _int(raw: object, what: str) -> int:
    if isinstance(raw, bool):
        raise errors.InvalidArgument(f"{what} must be an integer")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw))
    except ValueError:
        raise errors.InvalidArgument(f"{what} must be an integer") from None


def check_num(raw: object) -> int:
    """The configuration number a request was routed by (0: none given)."""
    if raw is None:
        return 0
    num = _int(raw, CONFIG_HEADER)
    if not 0 <= num < 2**63:
        raise errors.InvalidArgument(f"{CONFIG_HEADER} must be >= 0")
    return num


def check_timeout(limits: Limits, raw: object) -> float:
    """A request's deadline in seconds from its milliseconds (None: the default)."""
    if raw is None:
        return limits.request_timeout_s
    ms = _int(raw, TIMEOUT_HEADER)
    if not 1 <= ms <= 600_000:
        raise errors.InvalidArgument(f"{TIMEOUT_HEADER} must be in 1..600000")
    return ms / 1000


def check_read(raw: object) -> bool:
    """The ``read`` option of a get or scan: True for a follower read."""
    if raw is None or raw == "" or raw == "leader":
        return False
    if raw == "follower":
        return True
    raise errors.InvalidArgument("read must be leader or follower")


def check_session(limits: Limits, cid: object, seq: object, ack: object) -> tuple[str, int, int]:
    """(client id, seq, ack) of a write's session; ("", 0, 0) for none."""
    if not cid:
        return "", 0, 0
    if not isinstance(cid, str):
        raise errors.InvalidArgument(f"{CLIENT_HEADER} must be a string")
    if len(cid) > limits.max_client_id_chars:
        raise errors.InvalidArgument(f"{CLIENT_HEADER} longer than "
                                     f"{limits.max_client_id_chars} characters")
    what = f"{SEQ_HEADER}/{ACK_HEADER}"
    s, a = _int(seq if seq is not None else "", what), _int(ack if ack is not None else 0, what)
    if s < 1 or a < 0 or a > s or s >= 2**63:
        raise errors.InvalidArgument(f"need 1 <= {SEQ_HEADER} and 0 <= {ACK_HEADER} <= seq")
    return cid, s, a


def command(limits: Limits, op: Op, key: object, value: object, cid: object, seq: object,
            ack: object, num: object) -> Command:
    """A validated write command (what both the HTTP routes and the stream build)."""
    k = check_key(limits, key)
    v = check_value(limits, value) if op != Op.DELETE else ""
    c, s, a = check_session(limits, cid, seq, ack)
    return Command(op, k, v, c, s, a, check_num(num))


def write_result(result: Result) -> Result:
    """Turn a state machine's refusal into the error the client sees."""
    if result.status == Status.SESSION_EXPIRED:
        raise errors.SessionExpired("client session expired on the server")
    if result.status == Status.BAD_COMMAND:
        raise errors.InvalidArgument("command rejected by the state machine")
    return result


Observe = Callable[[str, int, float], None]
"""(operation, HTTP status, seconds) of each completed request, for metrics."""


class ClientAPI:
    def __init__(self, service: KVService, limits: Limits, observe: Observe | None = None) -> None:
        self.service = service
        self.limits = limits
        self.observe = observe

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/kv/{key:.+}", self._wrap("get", self.handle_get))
        r.add_put("/v1/kv/{key:.+}", self._wrap("put", self.handle_put))
        r.add_delete("/v1/kv/{key:.+}", self._wrap("delete", self.handle_delete))
        r.add_post("/v1/append/{key:.+}", self._wrap("append", self.handle_append))
        r.add_get("/v1/status", self._wrap("status", self.handle_status))
        r.add_get("/health", self._wrap("health", self.handle_health))

    def _wrap(self, op: str, h: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            try:
                resp = await h(request)
            except web.HTTPException as e:
                if e.status != 413:
                    raise
                resp = _json(413, {"error": "too_large", "message": e.reason})
            except Exception as e:
                resp = error_response(e, request)
            if self.observe is not None:
                self.observe(op, resp.status, time.perf_counter() - t0)
            return resp
        return handler

    # --- parsing -----------------------------------------------------------------

    def _key(self, request: web.Request) -> str:
        return check_key(self.limits, request.match_info.get("key", ""))

    def _num(self, request: web.Request) -> int:
        return check_num(request.headers.get(CONFIG_HEADER))

    def _timeout(self, request: web.Request) -> float:
        return check_timeout(self.limits, request.headers.get(TIMEOUT_HEADER))

    async def _value(self, request: web.Request) -> str:
        limit = self.limits.max_value_bytes
        if request.content_length is not None and request.content_length > limit + 64:
            raise errors.TooLarge(f"value larger than {limit} bytes")
        body = await request.read()
        if request.content_type == "application/json":
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise errors.InvalidArgument("body is not valid JSON") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
                raise errors.InvalidArgument('JSON body must be {"value": "<string>"}')
            return check_value(self.limits, doc["value"])
        try:
            return check_value(self.limits, body.decode("utf-8"))
        except UnicodeDecodeError:
            raise errors.InvalidArgument("value is not valid UTF-8") from None

    # --- handlers ----------------------------------------------------------------

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        value = await self.service.get(key, timeout_s=self._timeout(request),
                                       num=self._num(request),
                                       follower=check_read(request.query.get("read")))
        if value is None:
            return _json(404, {"error": "not_found", "key": key, "message": "key not found"})
        return _json(200, {"key": key, "value": value})

    async def _write(self, request: web.Request, op: Op) -> Result:
        h = request.headers
        value = await self._value(request) if op != Op.DELETE else ""
        cmd = command(self.limits, op, request.match_info.get("key", ""), value,
                      h.get(CLIENT_HEADER, ""), h.get(SEQ_HEADER), h.get(ACK_HEADER),
                      h.get(CONFIG_HEADER))
        return write_result(await self.service.write(cmd, timeout_s=self._timeout(request)))

    async def handle_put(self, request: web.Request) -> web.StreamResponse:
        await self._write(request, Op.PUT)
        return _json(200, {"ok": True})

    async def handle_append(self, request: web.Request) -> web.StreamResponse:
        await self._write(request, Op.APPEND)
        return _json(200, {"ok": True})

    async def handle_delete(self, request: web.Request) -> web.StreamResponse:
        result = await self._write(request, Op.DELETE)
        return _json(200, {"ok": True, "deleted": result.existed})

    async def handle_status(self, request: web.Request) -> web.StreamResponse:
        doc = self.service.status()
        if request_role(request) >= Role.ADMIN:
            return _json(200, doc)
        # Below admin: who leads what, and how far each replica is (no addresses of
        # peers, no backup or transport details).
        keep = ("role", "term", "leader", "commit", "applied", "member")
        return _json(200, {"node": doc.get("node"), "groups": {
            g: {k: v for k, v in st.items() if k in keep}
            for g, st in doc.get("groups", {}).items()}})

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"ok": True})
