"""The client stream: many key-value requests in flight on one websocket, in msgpack.

``GET /v1/stream`` upgrades to a websocket. Each binary message from the client is a
msgpack array of requests; each request is an array
``[id, op, key, value, client, seq, ack, config, timeout_ms]`` with ``op`` one of
``get``, ``put``, ``append``, ``delete`` (``value`` is nil for get and delete; the session
fields are those of the HTTP headers ``X-Kvraft-Client``/``-Seq``/``-Ack``, empty/0 for
none; ``config`` and ``timeout_ms`` those of ``X-Kvraft-Config``/``-Timeout-Ms``, 0 for
the default). A get may carry a tenth field, ``read``: ``"follower"`` lets a follower
serve it (as ``?read=follower`` over HTTP), ``"leader"`` or nil the default. Each
binary message from the node is a msgpack array of answers
``[id, status, body]``: ``status`` and ``body`` are exactly what the HTTP route would
answer (the same JSON document, as a msgpack map), so every client retry rule reads both
the same. Answers come in completion order, batched: whatever completed while the last
message was being written goes out in the next one.

The JSON HTTP API stays the interface for curl and for other languages; this stream is
what ``kvraft.Client`` and ``AsyncClient`` use by default, because it costs the node and
the client a fraction of an HTTP request each.

Limits: a message larger than ``stream_max_message_bytes`` or with more than
``stream_max_batch`` requests closes the stream (1009); at most
``stream_max_inflight`` requests of one stream are in the node at once, from reading to
the answer's write (the node stops reading the stream until some are written, so a
client that writes fast or does not read is slowed, never buffered without bound).
A request that cannot be read gets a 400 answer when its id can be read, and closes the
stream otherwise; nothing a client sends crashes the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from kvraft import errors
from kvraft.config import Limits
from kvraft.kv.commands import Op
from kvraft.transport.auth import Guard, Role, request_role
from kvraft.transport.http_api import (
    KVService,
    Observe,
    check_key,
    check_num,
    check_read,
    check_timeout,
    command,
    error_doc,
    write_result,
)

log = logging.getLogger("kvraft.stream")

STREAM_PATH = "/v1/stream"
OPS = {"put": Op.PUT, "append": Op.APPEND, "delete": Op.DELETE}
FIELDS = 9


class ClientStreamAPI:
    def __init__(self, service: KVService, limits: Limits, observe: Observe | None = None,
                 guard: Guard | None = None) -> None:
        self.guard = guard
        """Checks the stream's credentials again for every message: a token revoked (or
        a role lowered) while the stream is open takes effect on it too."""
        self.service = service
        self.limits = limits
        self.observe = observe
        self.active: set[_Stream] = set()
        self.bad_messages = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(STREAM_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.limits.stream_max_message_bytes,
                                   heartbeat=10.0, compress=False)
        await ws.prepare(request)
        conn = _Stream(self, ws, may_write=request_role(request) >= Role.WRITE,
                       request=request)
        self.active.add(conn)
        try:
            await conn.serve()
        finally:
            self.active.discard(conn)
            await conn.stop()
        return ws

    async def close(self) -> None:
        """Close every stream (a node stopping): clients go on with another node."""
        for conn in list(self.active):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"node stopping")

    async def answer(self, req: Any, may_write: bool = True) -> list[Any]:
        """``[id, status, body]`` for one request (never raises)."""
        t0 = time.perf_counter()
        if (not isinstance(req, list) or not FIELDS <= len(req) <= FIELDS + 1
                or not isinstance(req[0], int)):
            raise _Unreadable("a request must be [id, op, key, value, client, seq, ack, "
                              "config, timeout_ms] or that and read")
        rid, op, key, value, cid, seq, ack, num, timeout_ms = req[:FIELDS]
        if not isinstance(op, str):
            op = repr(op)[:20]
        try:
            timeout_s = check_timeout(self.limits, timeout_ms or None)
            if op == "get":
                follower = len(req) > FIELDS and check_read(req[FIELDS])
                got = await self.service.get(check_key(self.limits, key), timeout_s=timeout_s,
                                             num=check_num(num or None), follower=follower)
                status, body = ((200, {"key": key, "value": got}) if got is not None else
                                (404, {"error": "not_found", "key": key,
                                       "message": "key not found"}))
            elif op in OPS and not may_write:
                status, body = 403, {"error": "forbidden", "message": f"{op} needs the write "
                                     "role; the token has read"}
            elif op in OPS:
                cmd = command(self.limits, OPS[op], key, value, cid, seq or None, ack, num or None)
                res = write_result(await self.service.write(cmd, timeout_s=timeout_s))
                status, body = 200, ({"ok": True, "deleted": res.existed} if op == "delete"
                                     else {"ok": True})
            else:
                raise errors.InvalidArgument("op must be one of get, put, append, delete")
        except Exception as e:
            status, body = error_doc(e)
        if self.observe is not None:
            self.observe(op if isinstance(op, str) and (op == "get" or op in OPS) else "stream",
                         status, time.perf_counter() - t0)
        return [rid, status, body]


class _Unreadable(Exception):
    pass


class _Stream:
    """One client's websocket: reads requests, serves them concurrently, batches answers."""

    def __init__(self, api: ClientStreamAPI, ws: web.WebSocketResponse, may_write: bool,
                 request: web.Request | None = None) -> None:
        self.api = api
        self.ws = ws
        self.may_write = may_write
        self.request = request
        self.out: list[Any] = []
        self.wake = asyncio.Event()
        self.room = asyncio.Semaphore(api.limits.stream_max_inflight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.dead = False
        self.writer = asyncio.ensure_future(self._write_loop())

    async def serve(self) -> None:
        limits = self.api.limits
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.ERROR:  # e.g. too large: aiohttp closed it (1009)
                    self.api.bad_messages += 1
                    break
                await self._refuse(WSCloseCode.UNSUPPORTED_DATA, "binary msgpack messages only")
                break
            try:
                reqs = msgpack.unpackb(msg.data, raw=False, use_list=True,
                                       max_array_len=max(limits.stream_max_batch, 64),
                                       max_map_len=0, max_bin_len=0, max_ext_len=0)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                    TypeError):
                await self._refuse(WSCloseCode.UNSUPPORTED_DATA, "not a msgpack message")
                break
            if not isinstance(reqs, list) or not reqs:
                await self._refuse(WSCloseCode.POLICY_VIOLATION, "a message is an array of "
                                   "requests")
                break
            if len(reqs) > limits.stream_max_batch:
                await self._refuse(WSCloseCode.MESSAGE_TOO_BIG, "more than "
                                   f"{limits.stream_max_batch} requests in one message")
                break
            if not self._still_allowed():  # revoked since: nothing of it is served
                self.api.bad_messages += 1
                for r in reqs:
                    if isinstance(r, list) and r and isinstance(r[0], int):
                        await self.room.acquire()  # (released once the answer is written)
                        self.out.append([r[0], 401, {"error": "unauthorized",
                                                     "message": "the token was revoked"}])
                self.wake.set()
                continue
            for req in reqs:
                await self.room.acquire()
                if self.dead or self.ws.closed:
                    return
                t = asyncio.ensure_future(self._one(req))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)

    def _still_allowed(self) -> bool:
        guard = self.api.guard
        if guard is None or self.request is None:
            return True
        try:
            role = guard.role(self.request)
        except web.HTTPException:  # (the token table is being loaded: keep the last role)
            return True
        if role is None or role < Role.READ:
            return False
        self.may_write = role >= Role.WRITE
        return True

    async def _one(self, req: Any) -> None:
        try:
            ans = await self.api.answer(req, self.may_write)  # (not out.append(await ...): out is swapped)
        except _Unreadable as e:
            rid = req[0] if isinstance(req, list) and req and isinstance(req[0], int) else None
            if rid is None:
                self.room.release()
                await self._refuse(WSCloseCode.POLICY_VIOLATION, str(e))
                return
            ans = [rid, 400, {"error": "bad_request", "message": str(e)}]
        except BaseException:
            self.room.release()
            raise
        if self.dead:
            self.room.release()
            return
        self.out.append(ans)  # its room is released once it is written
        self.wake.set()

    async def _write_loop(self) -> None:
        batch: list[Any] = []
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if not self.out:
                    continue
                batch, self.out = self.out, []
                await self.ws.send_bytes(msgpack.packb(batch, use_bin_type=True))
                for _ in batch:  # a client that does not read stops being read
                    self.room.release()
                batch = []
        except Exception as e:  # the client went away (or closed): its answers go too
            log.debug("client stream writer stopped: %s", e)
            self.dead = True
            for _ in range(len(batch) + len(self.out) + self.api.limits.stream_max_inflight):
                self.room.release()  # wakes a reader waiting for room: it stops
            self.out.clear()
            if not self.ws.closed:
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"write failed")

    async def _refuse(self, code: int, why: str) -> None:
        self.api.bad_messages += 1
        log.info("closing a client stream: %s", why)
        await self.ws.close(code=code, message=why.encode()[:120])

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        self.writer.cancel()
        await asyncio.gather(self.writer, *self.tasks, return_exceptions=True)
