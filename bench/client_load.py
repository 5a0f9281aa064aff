#!/usr/bin/env python3
"""Closed-loop load through kvraft's own client library, the mirror of
``../shared/bench/etcd3_client_load.py`` (python-etcd3 against etcd).

``--mode sync``: T threads share one ``kvraft.Client``; ``--mode async``: C tasks share
one ``AsyncClient``. Each has one request in flight; 16-byte keys, 100-byte values;
sessions on (the default); gets are linearizable over keys a put run with the same
``--n`` wrote first. Bounded by ``--n`` per worker and ``--max-seconds``. One JSON line
per level.

  python bench/client_load.py --addr 127.0.0.1:7101 --mode sync --op put --levels 1 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from kvraft.client import AsyncClient, Client

VALUE = "v" * 100
STREAM = True


def key(t: int, i: int) -> str:
    return f"t{t:02d}k{i % 1000:012d}"


def keys(t: int, n: int, deadline: float) -> Iterator[str]:
    """Worker ``t``'s keys, up to ``n`` of them and until ``deadline`` (monotonic)."""
    for i in range(n):
        if time.monotonic() > deadline:
            return
        yield key(t, i)


def summary(mode: str, op: str, level: int, lat: list[float], errors: int,
            wall: float) -> dict[str, Any]:
    lat.sort()

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 3) if lat else None

    return {"client": f"kvraft.{'Client' if mode == 'sync' else 'AsyncClient'}", "op": op,
            "stream": STREAM,
            ("threads" if mode == "sync" else "concurrency"): level, "n_ok": len(lat),
            "errors": errors, "ops_s": round(len(lat) / wall, 1) if wall else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def run_sync(client: Client, op: str, threads: int, n: int, max_s: float) -> dict[str, Any]:
    lat: list[float] = []
    lock = threading.Lock()
    errors = [0]
    deadline = time.monotonic() + max_s

    def worker(t: int) -> None:
        mine = []
        for k in keys(t, n, deadline):
            s = time.perf_counter()
            try:
                client.put(k, VALUE) if op == "put" else client.get(k)
            except Exception:
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - s)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return summary("sync", op, threads, lat, errors[0], time.perf_counter() - t0)


async def run_async(client: AsyncClient, op: str, conc: int, n: int,
                    max_s: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    deadline = time.monotonic() + max_s

    async def worker(t: int) -> None:
        nonlocal errors
        for k in keys(t, n, deadline):
            s = time.perf_counter()
            try:
                await (client.put(k, VALUE) if op == "put" else client.get(k))
            except Exception:
                errors += 1
                continue
            lat.append(time.perf_counter() - s)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(conc)))
    return summary("async", op, conc, lat, errors, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT[,HOST:PORT...] (127.* only)")
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--op", choices=["put", "get"], default="put")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 16],
                    help="threads (sync) or tasks (async)")
    ap.add_argument("--n", type=int, default=2000, help="operations per worker")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--uvloop", action="store_true", help="async mode on uvloop")
    ap.add_argument("--http", action="store_true",
                    help="JSON HTTP requests instead of the client stream (stream=False)")
    ap.add_argument("--read-from", choices=["leader", "any", "follower"], default="leader",
                    help="where gets go (the client's read_from): followers serve them with "
                    "a read index from their leader")
    a = ap.parse_args()
    global STREAM
    STREAM = not a.http
    if not all(x.split(":")[0].startswith("127.") for x in a.addr.split(",")):
        sys.exit("refusing non-loopback target: " + a.addr)
    if a.mode == "sync":
        with Client(a.addr, stream=not a.http, read_from=a.read_from) as c:
            c.shard_map()
            for t in a.levels:
                print(json.dumps(run_sync(c, a.op, t, a.n, a.max_seconds)), flush=True)
        return

    async def go() -> None:
        async with AsyncClient(a.addr, stream=not a.http, read_from=a.read_from) as c:
            await c.shard_map()
            for t in a.levels:
                print(json.dumps(await run_async(c, a.op, t, a.n, a.max_seconds)), flush=True)

    if a.uvloop:
        import uvloop
        uvloop.run(go())
    else:
        asyncio.run(go())


if __name__ == "__main__":
    main()
