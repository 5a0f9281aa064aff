"""HTTP routes of a sharded cluster: the shard map, scans, the controller, range transfer.

Client routes (the read role):

- ``GET  /v1/shards[?fresh=1]``  the newest configuration this node knows (``fresh``:
  ask the controller first) and the controller's addresses
- ``GET  /v1/scan?start=&end=&limit=``  keys in ``[start, end)`` of the one range that
  holds ``start`` (SHARDING.md rule 9): ``{"items": [[k, v]...], "range_end": ...}``;
  the caller continues from ``range_end``
- ``GET  /v1/ctrl/config?num=N``  configuration N (``-1``: the latest), from the
  controller's leader

Operator routes (the admin role, ``kvraft.transport.auth``):

- ``POST /v1/ctrl/command``  JSON ``{"op": "join"|"leave"|"move"|"split"|"merge",
  ...}``: one controller command; answers the new configuration number
- ``POST /v1/ctrl/plan``  JSON ``{"apply": bool}``: the rebalance plan, applied if asked
- ``GET  /v1/ctrl/tokens[?since=V]``  the token table ``{"version", "tokens": [{"name",
  "role", "hash"}]}`` (just the version if still ``V``); ``token_put``/``token_revoke``
  are commands (``{"op": "token_put", "name", "role", "hash"}``)

Peer routes between groups (the peer role):

- ``POST /v1/internal/pull``  the next chunk of a frozen outgoing range (keys, then
  client sessions), bounded in bytes; 409 ``not_ready`` if not frozen here yet
- ``POST /v1/internal/installed``  whether a group installed what it gained at N
- ``GET  /v1/internal/stats?gid=``  keys and bytes per range of a group

Every error is a JSON body with a 4xx/5xx status (see ``http_api.error_response``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from kvraft import errors
from kvraft.config import Limits
from kvraft.transport.http_api import Observe, check_read, error_response


class ShardService(Protocol):
    """What these routes need from the node (implemented by the runtime)."""

    async def shard_map(self, *, fresh: bool) -> dict[str, Any]: ...
    async def scan(self, start: str, end: str | None, limit: int, *, timeout_s: float,
                   num: int, follower: bool = False) -> dict[str, Any]: ...
    async def ctrl_query(self, num: int, *, timeout_s: float) -> dict[str, Any]: ...
    async def ctrl_command(self, doc: dict[str, Any], *, timeout_s: float) -> dict[str, Any]: ...
    async def ctrl_tokens(self, since: int, *, timeout_s: float) -> dict[str, Any]: ...
    async def ctrl_plan(self, apply: bool, *, timeout_s: float) -> dict[str, Any]: ...
    async def export_range(self, doc: dict[str, Any]) -> dict[str, Any]: ...
    async def range_installed(self, doc: dict[str, Any]) -> dict[str, Any]: ...
    async def range_stats(self, gid: int) -> dict[str, Any]: ...


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


MAX_ID = 2**63 - 1
MAX_KEY_BYTES = 4096


def opt_str(doc: dict[str, Any], name: str) -> str | None:
    """An optional string field that is a valid key (UTF-8, at most 4 KiB)."""
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise errors.InvalidArgument(f"{name} must be a string or null")
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.InvalidArgument(f"{name} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise errors.TooLarge(f"{name} longer than {MAX_KEY_BYTES} bytes")
    return v


async def json_body(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request's body as a JSON object (empty: ``{}``); 413 if larger than
    ``max_bytes``, 400 if it is not a JSON object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise errors.TooLarge(f"body larger than {max_bytes} bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise errors.TooLarge(f"body larger than {max_bytes} bytes")
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidArgument("body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise errors.InvalidArgument("body must be a JSON object")
    return doc


def req_int(doc: dict[str, Any], name: str, lo: int = 0, hi: int = MAX_ID) -> int:
    v = doc.get(name)
    if type(v) is not int or not lo <= v <= hi:
        raise errors.InvalidArgument(f"{name} must be an integer in {lo}..{hi}")
    return v


class ShardAPI:
    def __init__(self, service: ShardService, limits: Limits,
                 observe: Observe | None = None) -> None:
        self.service = service
        self.limits = limits
        self.timeout_s = limits.request_timeout_s
        self.observe = observe

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/shards", self._wrap(self.handle_shards))
        r.add_get("/v1/scan", self._wrap(self.handle_scan))
        r.add_get("/v1/ctrl/config", self._wrap(self.handle_config))
        r.add_get("/v1/ctrl/tokens", self._wrap(self.handle_tokens))
        r.add_post("/v1/ctrl/command", self._wrap(self.handle_command))
        r.add_post("/v1/ctrl/plan", self._wrap(self.handle_plan))
        r.add_post("/v1/internal/pull", self._wrap(self.handle_pull))
        r.add_post("/v1/internal/installed", self._wrap(self.handle_installed))
        r.add_get("/v1/internal/stats", self._wrap(self.handle_stats))

    def _wrap(self, h: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await h(request)
            except web.HTTPException:
                raise
            except Exception as e:
                return error_response(e, request)
        return handler

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await json_body(request, self.limits.max_json_bytes)

    @staticmethod
    def _qint(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise errors.InvalidArgument(f"{name} must be an integer") from None
        if not lo <= v <= hi:
            raise errors.InvalidArgument(f"{name} must be in {lo}..{hi}")
        return v

    @staticmethod
    def _qint_header(request: web.Request) -> int:
        raw = request.headers.get("X-Kvraft-Config", "0")
        try:
            v = int(raw)
        except ValueError:
            raise errors.InvalidArgument("X-Kvraft-Config must be an integer") from None
        if not 0 <= v <= MAX_ID:
            raise errors.InvalidArgument("X-Kvraft-Config out of range")
        return v

    async def handle_shards(self, request: web.Request) -> web.StreamResponse:
        fresh = request.query.get("fresh", "") in ("1", "true", "yes")
        return _json(200, await self.service.shard_map(fresh=fresh))

    async def handle_scan(self, request: web.Request) -> web.StreamResponse:
        start = opt_str({"start": request.query.get("start", "")}, "start") or ""
        end = opt_str({"end": request.query.get("end") or None}, "end")
        limit = self._qint(request, "limit", min(1000, self.limits.max_scan_limit), 1,
                           self.limits.max_scan_limit)
        num = self._qint(request, "num", 0, 0, MAX_ID)
        if "num" not in request.query:
            num = self._qint_header(request)
        if end is not None and end <= start:
            return _json(200, {"items": [], "range_end": end, "num": 0})
        follower = check_read(request.query.get("read"))
        return _json(200, await self.service.scan(start, end, limit, timeout_s=self.timeout_s,
                                                  num=num, follower=follower))

    async def handle_config(self, request: web.Request) -> web.StreamResponse:
        num = self._qint(request, "num", -1, -1, MAX_ID)
        return _json(200, await self.service.ctrl_query(num, timeout_s=self.timeout_s))

    async def handle_tokens(self, request: web.Request) -> web.StreamResponse:
        since = self._qint(request, "since", -1, -1, 2**62)
        return _json(200, await self.service.ctrl_tokens(since, timeout_s=self.timeout_s))

    async def handle_command(self, request: web.Request) -> web.StreamResponse:
        doc = await self._body(request)
        return _json(200, await self.service.ctrl_command(doc, timeout_s=self.timeout_s))

    async def handle_plan(self, request: web.Request) -> web.StreamResponse:
        doc = await self._body(request)
        apply = doc.get("apply", False)
        if not isinstance(apply, bool):
            raise errors.InvalidArgument("apply must be true or false")
        return _json(200, await self.service.ctrl_plan(apply, timeout_s=self.timeout_s))

    async def handle_pull(self, request: web.Request) -> web.StreamResponse:
        return _json(200, await self.service.export_range(await self._body(request)))

    async def handle_installed(self, request: web.Request) -> web.StreamResponse:
        return _json(200, await self.service.range_installed(await self._body(request)))

    async def handle_stats(self, request: web.Request) -> web.StreamResponse:
        gid = self._qint(request, "gid", -1, 1, MAX_ID)
        return _json(200, await self.service.range_stats(gid))
