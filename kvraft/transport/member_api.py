"""HTTP routes for membership changes and leadership transfer (the admin role).

- ``GET  /v1/admin/members?group=G``: voters, learners, addresses, and on the leader
  each member's replication progress;
- ``POST /v1/admin/members`` ``{"group": G, "op": "add"|"add-learner"|"promote"|"remove",
  "id": N, "address": "host:port", "promote": true, "timeout_s": 300}``: runs on the
  group's leader (307 to it from another member; forwarded from a node not hosting G);
- ``POST /v1/admin/transfer-leader`` ``{"group": G, "to": N}``.

Answers are JSON; errors use the same codes as the client API (400 for a change the
rules refuse, 503 with ``unavailable`` for one that must wait, 307 to the leader).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from kvraft import errors
from kvraft.transport.http_api import _json, error_response
from kvraft.transport.shard_api import MAX_ID, json_body, req_int

MAX_TIMEOUT_S = 3600.0
OPS = ("add", "add-learner", "promote", "remove")


class MemberService(Protocol):
    async def members(self, gid: int, *, timeout_s: float) -> dict[str, Any]: ...
    async def change_member(self, doc: dict[str, Any], *, timeout_s: float
                            ) -> dict[str, Any]: ...
    async def transfer_leader(self, gid: int, to: int, *, timeout_s: float
                              ) -> dict[str, Any]: ...


class MemberAPI:
    def __init__(self, service: MemberService, *, default_timeout_s: float) -> None:
        self.service = service
        self.default_timeout_s = default_timeout_s

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/admin/members", self._list)
        app.router.add_post("/v1/admin/members", self._change)
        app.router.add_post("/v1/admin/transfer-leader", self._transfer)

    async def _doc(self, request: web.Request) -> dict[str, Any]:
        return await json_body(request, 65536)

    def _timeout(self, doc: dict[str, Any]) -> float:
        t = doc.get("timeout_s", self.default_timeout_s)
        if type(t) not in (int, float) or not 0 < t <= MAX_TIMEOUT_S:
            raise errors.InvalidArgument(f"timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
        return float(t)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = request.query.get("group", "")
            if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_ID:
                raise errors.InvalidArgument("?group= must be a group id")
            return _json(200, await self.service.members(int(raw),
                                                         timeout_s=self.default_timeout_s))
        except Exception as e:
            return error_response(e, request)

    async def _change(self, request: web.Request) -> web.StreamResponse:
        try:
            doc = await self._doc(request)
            op = doc.get("op")
            if op not in OPS:
                raise errors.InvalidArgument(f"op must be one of {', '.join(OPS)}")
            clean: dict[str, Any] = {"op": op, "group": req_int(doc, "group", 0),
                                     "id": req_int(doc, "id", 1)}
            if "address" in doc:
                if not isinstance(doc["address"], str) or len(doc["address"]) > 255:
                    raise errors.InvalidArgument("address must be a HOST:PORT string")
                clean["address"] = doc["address"]
            if "promote" in doc:
                if not isinstance(doc["promote"], bool):
                    raise errors.InvalidArgument("promote must be true or false")
                clean["promote"] = doc["promote"]
            timeout_s = self._timeout(doc)
            clean["timeout_s"] = timeout_s
            return _json(200, await self.service.change_member(clean, timeout_s=timeout_s))
        except Exception as e:
            return error_response(e, request)

    async def _transfer(self, request: web.Request) -> web.StreamResponse:
        try:
            doc = await self._doc(request)
            return _json(200, await self.service.transfer_leader(
                req_int(doc, "group", 0), req_int(doc, "to", 1), timeout_s=self._timeout(doc)))
        except Exception as e:
            return error_response(e, request)
