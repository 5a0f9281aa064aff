"""The client HTTP API (JSON, curl-friendly) and its error mapping.

Routes (``{key}`` is the URL-encoded key; it may contain ``/``):

- ``GET    /v1/kv/{key}``      -> 200 ``{"key", "value"}``; 404 if absent
- ``PUT    /v1/kv/{key}``      body = the value (raw UTF-8, or JSON ``{"value": ...}``)
- ``POST   /v1/append/{key}``  body as for PUT; appends (creates the key if absent)
- ``DELETE /v1/kv/{key}``      -> 200 ``{"deleted": bool}``
- ``GET    /v1/status``        this node's replicas: role, term, commit, applied, leader
- ``GET    /health``

Writes may carry a client session in headers (``X-Kvraft-Client``, ``X-Kvraft-Seq``,
``X-Kvraft-Ack``) so that a retried write takes effect once. A node that is not the
leader answers ``307`` with the leader's URL in ``Location`` (``curl -L`` follows it)
and in the JSON body. Every error has a JSON body ``{"error": code, "message": ...}``;
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

    async def get(self, key: str, *, timeout_s: float, num: int = 0) -> str | None: ...
    async def write(self, cmd: Command, *, timeout_s: float) -> Result: ...
    def status(self) -> dict[str, Any]: ...


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


def error_response(exc: BaseException, request: web.Request | None = None) -> web.Response:
    """The one place where exceptions become HTTP status codes."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, errors.NotLeader):
        if exc.leader:
            url = f"http://{exc.leader}{request.path_qs if request is not None else ''}"
            return _json(307, {"error": "not_leader", "leader": exc.leader, "message": msg},
                         {"Location": url, LEADER_HEADER: exc.leader})
        return _json(503, {"error": "no_leader", "message": msg})
    if isinstance(exc, errors.WrongGroup):
        body = {"error": "wrong_group", "num": exc.num, "group": exc.gid, "message": msg}
        if exc.redirect:
            url = f"http://{exc.redirect}{request.path_qs if request is not None else ''}"
            body["redirect"] = exc.redirect
            return _json(307, body, {"Location": url})
        return _json(421, body)
    if isinstance(exc, errors.NotReady):
        return _json(409, {"error": "not_ready", "message": msg})
    if isinstance(exc, errors.Gone):
        return _json(410, {"error": "gone", "message": msg})
    if isinstance(exc, errors.NotFound):
        return _json(404, {"error": "not_found", "message": msg})
    if isinstance(exc, errors.TooLarge):
        return _json(413, {"error": "too_large", "message": msg})
    if isinstance(exc, errors.InvalidArgument):
        return _json(400, {"error": "bad_request", "message": msg})
    if isinstance(exc, errors.SessionExpired):
        return _json(409, {"error": "session_expired", "message": msg})
    if isinstance(exc, errors.OutcomeUnknown):
        return _json(503, {"error": "outcome_unknown", "message": msg})
    if isinstance(exc, errors.Unavailable):
        return _json(503, {"error": "unavailable", "message": msg})
    log.exception("internal error", exc_info=exc)
    return _json(500, {"error": "internal", "message": msg})


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
        key = request.match_info.get("key", "")
        if not key:
            raise errors.InvalidArgument("empty key")
        if len(key.encode("utf-8", "surrogatepass")) > self.limits.max_key_bytes:
            raise errors.TooLarge(f"key longer than {self.limits.max_key_bytes} bytes")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidArgument("key is not valid UTF-8") from None
        return key

    def _num(self, request: web.Request) -> int:
        raw = request.headers.get(CONFIG_HEADER)
        if raw is None:
            return 0
        try:
            num = int(raw)
        except ValueError:
            raise errors.InvalidArgument(f"{CONFIG_HEADER} must be an integer") from None
        if not 0 <= num < 2**63:
            raise errors.InvalidArgument(f"{CONFIG_HEADER} must be >= 0")
        return num

    def _timeout(self, request: web.Request) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return self.limits.request_timeout_s
        try:
            ms = int(raw)
        except ValueError:
            raise errors.InvalidArgument(f"{TIMEOUT_HEADER} must be an integer") from None
        if not 1 <= ms <= 600_000:
            raise errors.InvalidArgument(f"{TIMEOUT_HEADER} must be in 1..600000")
        return ms / 1000

    async def _value(self, request: web.Request) -> str:
        limit = self.limits.max_value_bytes
        if request.content_length is not None and request.content_length > limit + 64:
            raise errors.TooLarge(f"value larger than {limit} bytes")
        body = await request.read()
        if request.content_type == "application/json":
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise errors.InvalidArgument("body is not valid JSON") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
                raise errors.InvalidArgument('JSON body must be {"value": "<string>"}')
            value: str = doc["value"]
        else:
            try:
                value = body.decode("utf-8")
            except UnicodeDecodeError:
                raise errors.InvalidArgument("value is not valid UTF-8") from None
        if len(value.encode("utf-8")) > limit:
            raise errors.TooLarge(f"value larger than {limit} bytes")
        return value

    def _session(self, request: web.Request) -> tuple[str, int, int]:
        cid = request.headers.get(CLIENT_HEADER, "")
        if not cid:
            return "", 0, 0
        if len(cid) > self.limits.max_client_id_chars:
            raise errors.InvalidArgument(f"{CLIENT_HEADER} longer than "
                                         f"{self.limits.max_client_id_chars} characters")
        try:
            seq = int(request.headers.get(SEQ_HEADER, ""))
            ack = int(request.headers.get(ACK_HEADER, "0"))
        except ValueError:
            raise errors.InvalidArgument(f"{SEQ_HEADER}/{ACK_HEADER} must be integers") from None
        if seq < 1 or ack < 0 or ack > seq or seq >= 2**63:
            raise errors.InvalidArgument(f"need 1 <= {SEQ_HEADER} and 0 <= {ACK_HEADER} <= seq")
        return cid, seq, ack

    # --- handlers ----------------------------------------------------------------

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        value = await self.service.get(key, timeout_s=self._timeout(request),
                                       num=self._num(request))
        if value is None:
            return _json(404, {"error": "not_found", "key": key, "message": "key not found"})
        return _json(200, {"key": key, "value": value})

    async def _write(self, request: web.Request, op: Op) -> Result:
        key = self._key(request)
        value = await self._value(request) if op != Op.DELETE else ""
        cid, seq, ack = self._session(request)
        cmd = Command(op, key, value, cid, seq, ack, self._num(request))
        result = await self.service.write(cmd, timeout_s=self._timeout(request))
        if result.status == Status.SESSION_EXPIRED:
            raise errors.SessionExpired("client session expired on the server")
        if result.status == Status.BAD_COMMAND:
            raise errors.InvalidArgument("command rejected by the state machine")
        return result

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
        return _json(200, self.service.status())

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"ok": True})
