"""HTTP calls from a node to other groups: the controller and range transfers.

:class:`GroupCaller` sends one request to a group given its members' addresses: it
tries the last leader it saw for that group first, follows ``307`` redirects to the
leader, and moves on to the next member on connection errors, until a deadline. An
answer is returned as the JSON document of a 200; other statuses become the
exceptions of ``kvraft.errors`` (``NotReady`` for 409, ``Gone`` for 410,
``WrongGroup`` for 421, ``NotFound`` for 404).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from kvraft import errors
from kvraft.transport.auth import SECRET_HEADER
from kvraft.transport.tls import TLS, client_ssl, url


class GroupCaller:
    def __init__(self, secret: str, *, attempt_timeout_s: float = 2.0,
                 tls: TLS | None = None) -> None:
        self.secret = secret
        self.tls = tls
        self.attempt_timeout_s = attempt_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._leader: dict[tuple[str, ...], str] = {}

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ssl=client_ssl(self.tls)),
                timeout=aiohttp.ClientTimeout(total=None))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def call(self, addrs: Sequence[str], method: str, path: str, *,
                   body: dict[str, Any] | None = None, params: dict[str, str] | None = None,
                   timeout_s: float = 5.0, attempt_timeout_s: float | None = None
                   ) -> dict[str, Any]:
        if not addrs:
            raise errors.Unavailable(f"{path}: no addresses to call")
        key = tuple(sorted(addrs))
        deadline = time.monotonic() + timeout_s
        order = list(addrs)
        hint = self._leader.get(key)
        if hint in order:
            order.remove(hint)
            order.insert(0, hint)
        last = "no member answered"
        tries = 0
        while time.monotonic() < deadline:
            addr = order[tries % len(order)]
            tries += 1
            for _ in range(3):  # follow redirects
                try:
                    status, doc = await self._once(addr, method, path, body, params,
                                                   deadline - time.monotonic(),
                                                   attempt_timeout_s)
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError,
                        RecursionError) as e:
                    last = f"{addr}: {type(e).__name__} {e}"
                    self._leader.pop(key, None)
                    break
                if status == 200:
                    self._leader[key] = addr
                    return doc
                if status == 307 and isinstance(doc.get("leader"), str):
                    addr = doc["leader"]
                    continue
                last = f"{addr}: {status} {doc.get('error', '')} {doc.get('message', '')}"
                self._raise_final(status, doc)
                break
            if tries % len(order) == 0:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        raise errors.Unavailable(f"{path}: {last.strip()}")

    @staticmethod
    def _raise_final(status: int, doc: dict[str, Any]) -> None:
        msg = str(doc.get("message", doc.get("error", status)))
        if status == 409 and doc.get("error") == "not_ready":
            raise errors.NotReady(msg)
        if status == 410:
            raise errors.Gone(msg)
        if status == 421:
            raise errors.WrongGroup(msg, num=int(doc.get("num", 0)))
        if status == 404:
            raise errors.NotFound(msg)
        if status in (400, 413):
            raise errors.InvalidArgument(msg)
        if status == 401:
            raise errors.ServerError(f"refused: {msg}")

    async def _once(self, addr: str, method: str, path: str, body: dict[str, Any] | None,
                    params: dict[str, str] | None, timeout_s: float,
                    attempt_timeout_s: float | None = None) -> tuple[int, dict[str, Any]]:
        t = max(0.05, min(timeout_s, attempt_timeout_s or self.attempt_timeout_s))
        async with self._session().request(
                method, url(self.tls, addr, path), json=body, params=params,
                headers={SECRET_HEADER: self.secret}, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=t)) as r:
            raw = await r.read()
            doc = json.loads(raw) if raw else {}
            if not isinstance(doc, dict):
                raise ValueError("answer is not a JSON object")
            return r.status, doc
