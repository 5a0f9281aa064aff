"""The cost of TLS: kvraft and etcd 3.4, each with and without TLS, side by side.

Both systems run 3 members on this machine with certificates from one ``kvraft certs``
CA: kvraft with mutual TLS between its nodes (``kvraft serve --tls-*``), etcd with
``--cert-file``/``--peer-cert-file`` (and peer client-certificate checks). One closed
loop of aiohttp requests (``--concurrency`` workers, the same for both systems) sends
puts, then linearizable gets, to each system's leader over HTTPS or HTTP. The shared
load clients (``../shared/bench/loadgen_*.py``) take only ``http://`` URLs, so this
script carries its own loop. Rounds alternate A/B; the table gives medians over rounds.

    python bench/tls_cost.py --rounds 2 --n 5000

Needs etcd-server and etcd-client (Debian), and kvraft installed in this interpreter.
kvraft runs with ``--no-auth`` here (the loop sends no token), ``--auth`` adds a row with
a token on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from kvraft import certs
from kvraft.testing.cluster import LocalCluster
from kvraft.testing.moto import free_port


def etcd_start(root: Path, tls: bool, ca: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    scheme = "https" if tls else "http"
    client = [free_port() for _ in range(3)]
    peer = [free_port() for _ in range(3)]
    cluster = ",".join(f"m{i}={scheme}://127.0.0.1:{peer[i]}" for i in range(3))
    procs = []
    for i in range(3):
        argv = ["etcd", "--name", f"m{i}", "--data-dir", str(root / f"etcd-{tls}-{i}"),
                "--listen-client-urls", f"{scheme}://127.0.0.1:{client[i]}",
                "--advertise-client-urls", f"{scheme}://127.0.0.1:{client[i]}",
                "--listen-peer-urls", f"{scheme}://127.0.0.1:{peer[i]}",
                "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{peer[i]}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "tls-cost", "--log-level", "warn"]
        if tls:
            crt, key = str(root / f"node-{i + 1}.crt"), str(root / f"node-{i + 1}.key")
            argv += ["--cert-file", crt, "--key-file", key, "--trusted-ca-file", str(ca),
                     "--peer-cert-file", crt, "--peer-key-file", key,
                     "--peer-trusted-ca-file", str(ca), "--peer-client-cert-auth"]
        log = open(root / f"etcd-{tls}-{i}.log", "ab")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, ETCD_UNSUPPORTED_ARCH="")))
    endpoints = [f"{scheme}://127.0.0.1:{p}" for p in client]
    return procs, asyncio.run(_etcd_leader(endpoints, ca if tls else None))


async def _etcd_leader(endpoints: list[str], ca: Path | None) -> str:
    ctx = _client_ctx(ca) if ca else None
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or True),
                                     timeout=aiohttp.ClientTimeout(total=2)) as s:
        while time.monotonic() < deadline:
            for ep in endpoints:
                try:
                    async with s.post(f"{ep}/v3/maintenance/status", json={}) as r:
                        doc = await r.json()
                    if doc.get("leader") and doc["leader"] == doc["header"]["member_id"]:
                        return ep
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                    continue
            await asyncio.sleep(0.2)
    raise RuntimeError("etcd elected no leader")


async def load(base: str, system: str, op: str, n: int, concurrency: int,
               ctx: ssl.SSLContext | None, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: list[float] = []
    errors = 0
    todo = iter(range(n))
    value = "v" * 100
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ctx or True),
                                     headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as s:
        async def worker() -> None:
            nonlocal errors
            for i in todo:
                key = f"k{i % 1000:07d}"
                t0 = time.perf_counter()
                if system == "etcd":
                    k = base64.b64encode(key.encode()).decode()
                    path, body = (("/v3/kv/put", {"key": k, "value": base64.b64encode(
                        value.encode()).decode()}) if op == "put" else ("/v3/kv/range", {"key": k}))
                    req = s.post(base + path, json=body)
                elif op == "put":
                    req = s.put(f"{base}/v1/kv/{key}", data=value)
                else:
                    req = s.get(f"{base}/v1/kv/{key}")
                try:
                    async with req as r:
                        await r.read()
                        if r.status not in (200, 404):
                            errors += 1
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"ops_s": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2] * 1000 if lat else 0,
            "errors": errors}


def _client_ctx(ca: Path) -> ssl.SSLContext:
    """The load loop's TLS: the CA, and a client certificate (etcd asks for one when it
    has a --trusted-ca-file; kvraft accepts one and needs none)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(ca.parent / "client-admin.crt", ca.parent / "client-admin.key")
    return ctx


def kvraft_leader(c: LocalCluster) -> str:
    return c.addrs[c.wait_for_leader(1)]


def run_round(root: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    ca = root / "ca.crt"
    ctx = _client_ctx(ca)
    variants = [("etcd", False), ("etcd", True), ("kvraft", False), ("kvraft", True)]
    if args.auth:
        variants.append(("kvraft+token", True))
    for system, tls in variants:
        label = f"{system} {'tls' if tls else 'plain'}"
        print(f"== {label}", file=sys.stderr)
        token = None
        procs: list[subprocess.Popen[bytes]] = []
        c: LocalCluster | None = None
        if system == "etcd":
            procs, base = etcd_start(root, tls, ca)
        else:
            c = LocalCluster(Path(tempfile.mkdtemp(dir=root)), nodes=3, tick_ms=50,
                             tls=tls, auth=system == "kvraft+token",
                             certs=root if tls else None)
            c.start()
            token = c.token
            base = ("https://" if tls else "http://") + kvraft_leader(c)
        try:
            for op, conc in (("put", 1), ("put", 64), ("get", 64)):
                r = asyncio.run(load(base, "etcd" if system == "etcd" else "kvraft", op,
                                     args.n if conc > 1 else args.n // 4, conc,
                                     ctx if tls else None, token))
                rows.append({"system": system, "tls": tls, "op": op, "c": conc, **r})
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            if c is not None:
                c.stop()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=5000, help="operations per level at c=64")
    ap.add_argument("--auth", action="store_true", help="also kvraft with TLS and a token")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kvraft-tls-cost-"))
    certs.init_ca(root, name="tls-cost")
    for i in (1, 2, 3):
        certs.issue_node(root, i, ["127.0.0.1", "localhost"])
    certs.issue_client(root, "admin")
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        print(f"== round {r + 1}", file=sys.stderr)
        run_round(root, args, rows)

    def med(system: str, tls: bool, op: str, c: int, field: str) -> float:
        v = [x[field] for x in rows if (x["system"], x["tls"], x["op"], x["c"]) ==
             (system, tls, op, c)]
        return statistics.median(v) if v else float("nan")

    print(f"medians of {args.rounds} rounds; TLS/plain for each system, and kvraft/etcd")
    print("| workload | etcd plain | etcd TLS | etcd TLS/plain | kvraft plain | kvraft TLS | "
          "kvraft TLS/plain | kvraft/etcd, both TLS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for op, c, field in (("put", 1, "p50_ms"), ("put", 64, "ops_s"), ("get", 64, "ops_s")):
        ep, et = med("etcd", False, op, c, field), med("etcd", True, op, c, field)
        kp, kt = med("kvraft", False, op, c, field), med("kvraft", True, op, c, field)
        print(f"| {op} c={c} {field} | {ep:.2f} | {et:.2f} | {et / ep:.2f} | {kp:.2f} | "
              f"{kt:.2f} | {kt / kp:.2f} | {kt / et:.2f} |")
    if args.auth:
        for op, c, field in (("put", 1, "p50_ms"), ("put", 64, "ops_s"), ("get", 64, "ops_s")):
            kt, ka = med("kvraft", True, op, c, field), med("kvraft+token", True, op, c, field)
            print(f"kvraft TLS + token, {op} c={c} {field}: {ka:.2f} ({ka / kt:.2f}x TLS alone)")


if __name__ == "__main__":
    main()
