"""Fault injection for the nemesis (the admin role; only with ``--enable-fault-injection``).

- ``GET    /v1/admin/faults``  the transport's current fault rules
- ``PUT    /v1/admin/faults``  JSON ``{"blocked_out": [ids], "blocked_in": [ids],
  "loss": 0..1, "delay_ms": >=0}`` replaces the rules (missing fields = no fault)
- ``DELETE /v1/admin/faults``  heals everything
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from kvraft.transport.peer import PeerTransport


def _error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": "bad_request", "message": message}),
               content_type="application/json")


def _ids(doc: dict[str, Any], name: str) -> set[int]:
    raw = doc.get(name, [])
    if not isinstance(raw, list) or not all(type(v) is int and v > 0 for v in raw):
        raise _error(web.HTTPBadRequest, f"{name} must be a list of node ids")
    return set(raw)


def _number(doc: dict[str, Any], name: str, hi: float) -> float:
    raw = doc.get(name, 0)
    if type(raw) not in (int, float) or not 0 <= raw <= hi:
        raise _error(web.HTTPBadRequest, f"{name} must be a number in [0, {hi}]")
    return float(raw)


class AdminAPI:
    def __init__(self, transport: PeerTransport) -> None:
        self.t = transport

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/admin/faults", self._get)
        app.router.add_put("/v1/admin/faults", self._put)
        app.router.add_delete("/v1/admin/faults", self._delete)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.t.faults.as_dict())

    async def _put(self, request: web.Request) -> web.Response:
        try:
            doc = json.loads(await request.read())
        except (ValueError, RecursionError):
            raise _error(web.HTTPBadRequest, "body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise _error(web.HTTPBadRequest, "body must be a JSON object")
        out, inn = _ids(doc, "blocked_out"), _ids(doc, "blocked_in")
        loss, delay = _number(doc, "loss", 1.0), _number(doc, "delay_ms", 60_000)
        f = self.t.faults
        f.blocked_out, f.blocked_in, f.loss, f.delay_ms = out, inn, loss, delay
        return web.json_response(f.as_dict())

    async def _delete(self, request: web.Request) -> web.Response:
        self.t.faults.clear()
        return web.json_response(self.t.faults.as_dict())
