#!/usr/bin/env python3
"""Where one write at concurrency 1 goes: CPU per write of each node and of the client,
the fsync of one raft.db commit, and the end-to-end latency, for the raw HTTP API and for
the client library's stream.

Starts the 3-node benchmark cluster (``bench/cluster.sh``), runs N sequential puts per
path, and reads each process's user and system CPU from ``/proc`` before and after::

  python bench/write_breakdown.py --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from kvraft.client import AsyncClient
from kvraft.storage.sqlite_util import open_wal, transaction

HERE = Path(__file__).resolve().parent
BASE = Path("/tmp/kvraft-bench")
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / TICK, int(f[12]) / TICK


def self_cpu() -> tuple[float, float]:
    t = os.times()
    return t.user, t.system


def commit_latency(n: int = 500) -> float:
    """p50 of one raft.db-style commit (WAL, synchronous=FULL) on this disk, in ms."""
    with tempfile.TemporaryDirectory() as d:
        conn = open_wal(Path(d) / "x.db", "FULL")
        conn.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, data BLOB)")
        lat = []
        for i in range(n):
            t = time.perf_counter()
            with transaction(conn):
                conn.execute("INSERT INTO entries VALUES (?, ?)", (i, b"x" * 160))
            lat.append(time.perf_counter() - t)
            if i == n // 2:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # steady state: WAL reused
        conn.close()
    return statistics.median(lat[n // 2 + 1:]) * 1e3


async def run_http(leader: str, n: int) -> list[float]:
    lat = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            t = time.perf_counter()
            async with s.put(f"http://{leader}/v1/kv/h{i:015d}", data=b"v" * 100) as r:
                await r.read()
                assert r.status == 200, r.status
            lat.append(time.perf_counter() - t)
    return lat


async def run_client(addrs: str, n: int) -> list[float]:
    lat = []
    async with AsyncClient(addrs) as c:
        await c.put("warm", "up")
        for i in range(n):
            t = time.perf_counter()
            await c.put(f"c{i:015d}", "v" * 100)
            lat.append(time.perf_counter() - t)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(f"raft.db commit (WAL, synchronous=FULL), p50: {commit_latency():.3f} ms")
    subprocess.run(["bash", str(HERE / "cluster.sh"), "start", a.python], check=True,
                   capture_output=True)
    try:
        leader = subprocess.run(["bash", str(HERE / "cluster.sh"), "leader"], check=True,
                                capture_output=True, text=True).stdout.strip()
        pids = {i: int((BASE / f"n{i}.pid").read_text()) for i in (1, 2, 3)}
        lead = int(leader[-1])
        addrs = ",".join(f"127.0.0.1:710{i}" for i in (1, 2, 3))
        for name, go in (("raw HTTP", lambda: run_http(leader, a.n)),
                         ("AsyncClient (stream)", lambda: run_client(addrs, a.n))):
            before = {i: cpu(p) for i, p in pids.items()}
            mine = self_cpu()
            t0 = time.perf_counter()
            lat = asyncio.run(go())
            wall = time.perf_counter() - t0
            after = {i: cpu(p) for i, p in pids.items()}
            mine2 = self_cpu()
            lat.sort()
            print(f"\n{name}: {a.n} puts in {wall:.2f} s, p50 {lat[len(lat) // 2] * 1e3:.3f} ms, "
                  f"p99 {lat[int(len(lat) * .99)] * 1e3:.3f} ms")
            for i in (1, 2, 3):
                u = (after[i][0] - before[i][0]) / a.n * 1e3
                s = (after[i][1] - before[i][1]) / a.n * 1e3
                role = "leader  " if i == lead else "follower"
                print(f"  node {i} ({role}) CPU per write: user {u:.3f} ms, system {s:.3f} ms")
            print(f"  client CPU per write: user {(mine2[0] - mine[0]) / a.n * 1e3:.3f} ms, "
                  f"system {(mine2[1] - mine[1]) / a.n * 1e3:.3f} ms")
    finally:
        subprocess.run(["bash", str(HERE / "cluster.sh"), "stop"], capture_output=True)


if __name__ == "__main__":
    main()
