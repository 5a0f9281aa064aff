#!/usr/bin/env python3
"""The floor and the ceiling of a Python server on this machine, for reading kvraft's
raw HTTP figures against etcd's.

* ``bare``: an aiohttp server that keeps PUT values in a dict and answers GETs from it:
  no replication, no disk. The load client and aiohttp alone; nothing built on aiohttp
  serves more requests per second here.
* ``floor``: the least a replicated write with fsync before the answer can cost in
  Python: a leader process (aiohttp, uvloop) sends each PUT over a websocket to two
  follower processes, which commit it to SQLite (WAL, synchronous=FULL) on their event
  loop and answer; the leader commits its own copy on a thread meanwhile and answers once
  it and one follower have the write. A GET waits for one follower to answer a ping sent
  after it arrived (one round confirms every GET waiting on it, as ReadIndex does). No
  terms, no log matching, no sessions, no apply: what is left is the hops and the fsync.
  Writes are not batched, so it is a floor at one request in flight only.

Both take the same URLs as kvraft (``/v1/kv/{key}``, JSON body ``{"value": ...}``), so
``../shared/bench/loadgen_http.py`` drives them unchanged::

  python bench/python_floor.py up floor      # prints the leader's URL, then serves
  python bench/python_floor.py up bare
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from aiohttp import web

PORTS = {"leader": 7301, "follower1": 7302, "follower2": 7303, "bare": 7304}


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, k TEXT, v TEXT)")
    return conn


def commit(conn: sqlite3.Connection, idx: int, key: str, value: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO log VALUES (?, ?, ?)", (idx, key, value))
    conn.execute("COMMIT")


async def body_value(request: web.Request) -> str:
    raw = await request.read()
    try:
        doc = json.loads(raw)
        return str(doc["value"]) if isinstance(doc, dict) else raw.decode()
    except ValueError:
        return raw.decode()


def ok(doc: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(doc), content_type="application/json")


def serve_bare(port: int) -> None:
    data: dict[str, str] = {}

    async def put(request: web.Request) -> web.Response:
        data[request.match_info["key"]] = await body_value(request)
        return ok({"ok": True})

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key not in data:
            return web.Response(status=404)
        return ok({"key": key, "value": data[key]})

    app = web.Application()
    app.router.add_put("/v1/kv/{key:.+}", put)
    app.router.add_get("/v1/kv/{key:.+}", get)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def serve_follower(port: int, db: Path) -> None:
    conn = open_db(db)

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            kind, idx, key, value = msgpack.unpackb(msg.data)
            if kind == "w":
                commit(conn, idx, key, value)  # on the loop: the answer waits for it
            await ws.send_bytes(msgpack.packb(idx))
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def serve_leader(port: int, db: Path, followers: list[int]) -> None:
    conn = open_db(db)
    log_thread = ThreadPoolExecutor(1)  # one write at a time: measure it at c=1 only
    data: dict[str, str] = {}
    waiting: dict[int, asyncio.Future[None]] = {}
    seq = itertools.count(1)
    links: list[aiohttp.ClientWebSocketResponse] = []
    reads: list[asyncio.Future[None]] = []
    read_round: list[int] = []  # the ping in flight, if any

    async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            idx = msgpack.unpackb(msg.data)
            fut = waiting.pop(idx, None)
            if fut is not None and not fut.done():
                fut.set_result(None)  # the first follower's answer; the second finds none

    async def start(app: web.Application) -> None:
        session = aiohttp.ClientSession()
        app["session"] = session
        for p in followers:
            for _ in range(100):
                try:
                    ws = await session.ws_connect(f"http://127.0.0.1:{p}/stream")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            links.append(ws)
            asyncio.get_running_loop().create_task(reader(ws))

    async def replicate(kind: str, key: str, value: str) -> tuple[int, asyncio.Future[None]]:
        idx = next(seq)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting[idx] = fut
        frame = msgpack.packb((kind, idx, key, value))
        for ws in links:
            await ws.send_bytes(frame)
        return idx, fut

    async def put(request: web.Request) -> web.Response:
        key, value = request.match_info["key"], await body_value(request)
        idx, acked = await replicate("w", key, value)
        own = asyncio.get_running_loop().run_in_executor(log_thread, commit, conn, idx, key, value)
        await asyncio.gather(own, acked)
        data[key] = value
        return ok({"ok": True})

    async def ping_round() -> None:
        while reads:
            batch, reads[:] = list(reads), []
            _, acked = await replicate("r", "", "")
            await acked
            for f in batch:
                if not f.done():
                    f.set_result(None)
        read_round.clear()

    async def get(request: web.Request) -> web.Response:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reads.append(fut)
        if not read_round:
            read_round.append(1)
            asyncio.get_running_loop().create_task(ping_round())
        await fut
        key = request.match_info["key"]
        if key not in data:
            return web.Response(status=404)
        return ok({"key": key, "value": data[key]})

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_put("/v1/kv/{key:.+}", put)
    app.router.add_get("/v1/kv/{key:.+}", get)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def up(what: str) -> list[subprocess.Popen[bytes]]:
    """Start ``bare`` or ``floor`` (three processes); returns the processes."""
    me = [sys.executable, str(Path(__file__).resolve())]
    d = Path(tempfile.mkdtemp(prefix="kvraft-floor-"))
    if what == "bare":
        specs = [["serve", "bare", "--port", str(PORTS["bare"])]]
    else:
        specs = [["serve", "follower", "--port", str(PORTS[f]), "--db", str(d / f"{f}.db")]
                 for f in ("follower1", "follower2")]
        specs.append(["serve", "leader", "--port", str(PORTS["leader"]), "--db",
                      str(d / "leader.db"), "--followers",
                      f"{PORTS['follower1']},{PORTS['follower2']}"])
    procs = [subprocess.Popen(me + s) for s in specs]
    port = PORTS["bare" if what == "bare" else "leader"]
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/kv/-", timeout=1)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # serving
                return procs
        except OSError:
            pass
        time.sleep(0.1)
    for p in procs:
        p.kill()
    raise SystemExit(f"{what} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("role", choices=["bare", "leader", "follower"])
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--db", type=Path)
    s.add_argument("--followers", default="")
    u = sub.add_parser("up")
    u.add_argument("what", choices=["bare", "floor"])
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if a.cmd == "up":
        procs = up(a.what)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        port = PORTS["bare" if a.what == "bare" else "leader"]
        print(f"http://127.0.0.1:{port}", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        return
    if a.role == "bare":
        serve_bare(a.port)
    elif a.role == "follower":
        serve_follower(a.port, a.db)
    else:
        serve_leader(a.port, a.db, [int(p) for p in a.followers.split(",")])
    os._exit(0)


if __name__ == "__main__":
    main()
