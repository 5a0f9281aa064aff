#!/usr/bin/env python3
"""kvraft against a 3-member etcd 3.4 on this machine, through the clients and over raw
HTTP, in one go: one table of ratios and a PNG chart of latency percentiles.

Each round runs etcd, then kvraft with 1 data group, then kvraft with 2 data groups
(the same three processes), so the systems alternate and a noisy spell hits both.
Every figure in the table is the median over the rounds.

  * raw HTTP: ``../shared/bench/loadgen_{etcd,http}.py`` (put c=1 and c=64, linearizable
    get c=64) against the leader;
  * what Python can do here at all (``bench/python_floor.py``): a bare aiohttp server
    (no replication, no disk: the ceiling of raw HTTP) and a minimal replicated write
    with fsync (the floor of a write at c=1), with the same load client;
  * through the clients: ``kvraft.Client`` from 1 and 16 threads and ``AsyncClient`` at
    c=1 and c=64 (``bench/client_load.py``) against python-etcd3 from 1, 16 and 64
    threads (``../shared/bench/etcd3_client_load.py``), puts and linearizable gets.

Needs etcd-server + etcd-client (Debian), a venv with etcd3 and 'protobuf<4' for the etcd
side, and matplotlib in kvraft's venv for the chart (``pip install -e '.[bench]'``)::

  python bench/vs_etcd.py --etcd3-python /tmp/etcd3venv/bin/python --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("SHARED_BENCH", HERE.parent.parent / "shared" / "bench"))


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def rows_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Runner:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.rows: list[dict[str, Any]] = []

    def add(self, system: str, rnd: int, kind: str, level: int, rows: list[dict[str, Any]]
            ) -> None:
        for r in rows:
            r.update({"system": system, "round": rnd, "kind": kind, "level": level})
            self.rows.append(r)
            print(f"  {system:9} {kind:12} {r['op']:3} {level:>3}: {r.get('ops_s', 0):>8.1f}/s "
                  f"p50 {r.get('p50_ms')} ms p99 {r.get('p99_ms')} ms "
                  f"errors {r.get('errors', 0)}", flush=True)

    def raw(self, system: str, rnd: int, url_args: list[str], script: str,
            work: tuple[tuple[str, tuple[int, ...]], ...] = (("put", (1, 64)), ("get", (64,)))
            ) -> None:
        lg = self.a.loadgen_python
        for op, levels in work:
            for c in levels:
                n = self.a.raw_n if c > 1 else self.a.raw_n // 5
                out = sh(lg, str(SHARED / script), *url_args, "--op", op, "--n", str(n),
                         "--concurrency", str(c), "--uvloop", "--max-seconds", "30")
                self.add(system, rnd, "raw", c, rows_of(out))

    def clients(self, system: str, rnd: int, cmd: list[str], levels: list[tuple[str, int]]
                ) -> None:
        for op in ("put", "get"):
            for kind, level in levels:
                n = max(20, self.a.client_ops // level)
                mode = [] if kind == "etcd3" else ["--mode", kind]
                flag = "--threads" if kind == "etcd3" else "--levels"
                out = sh(*cmd, *mode, "--op", op, flag, str(level), "--n", str(n),
                         "--max-seconds", "30")
                self.add(system, rnd, kind, level, rows_of(out))

    def etcd(self, rnd: int) -> None:
        cl = str(SHARED / "etcd_cluster.sh")
        sh("bash", cl, "start")
        try:
            leader = sh("bash", cl, "leader").strip()
            self.raw("etcd", rnd, ["--endpoint", leader], "loadgen_etcd.py")
            self.clients("etcd", rnd, [self.a.etcd3_python, str(SHARED / "etcd3_client_load.py"),
                                       "--endpoint", leader.removeprefix("http://")],
                         [("etcd3", 1), ("etcd3", 16), ("etcd3", 64)])
        finally:
            sh("bash", cl, "stop")

    def python(self, rnd: int, what: str) -> None:
        """``bench/python_floor.py``: a bare aiohttp server (the ceiling of raw HTTP here)
        or the least a replicated, fsynced write costs in Python (the floor at c=1)."""
        p = subprocess.Popen([self.a.kvraft_python, str(HERE / "python_floor.py"), "up", what],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            url = p.stdout.readline().strip() + "/v1/kv/{key}"
            work = ((("put", (1, 64)), ("get", (64,))) if what == "bare"
                    else (("put", (1,)),))
            self.raw(f"python-{what}", rnd, ["--put-url", url, "--get-url", url,
                                             "--json-value", "value"], "loadgen_http.py", work)
        finally:
            p.terminate()
            p.wait(30)

    def kvraft(self, rnd: int, groups: int) -> None:
        cl = str(HERE / "cluster.sh")
        env = {"DATA_GROUPS": str(groups), "EXTRA_ARGS": self.a.kvraft_args}
        sh("bash", cl, "start", self.a.kvraft_python, env=env)
        system = f"kvraft-{groups}g"
        try:
            leader = sh("bash", cl, "leader").strip()
            if groups == 1:
                url = f"http://{leader}/v1/kv/{{key}}"
                self.raw(system, rnd, ["--put-url", url, "--get-url", url, "--json-value", "value"],
                         "loadgen_http.py")
            addrs = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
            self.clients(system, rnd, [self.a.kvraft_python, str(HERE / "client_load.py"),
                                       "--addr", addrs, *self.a.client_args.split()],
                         [("sync", 1), ("sync", 16), ("async", 1), ("async", 64)])
        finally:
            sh("bash", cl, "stop", env=env)


def med(rows: list[dict[str, Any]], field: str, **match: Any) -> float:
    v = [r[field] for r in rows if all(r.get(k) == x for k, x in match.items())
         and r.get(field) is not None]
    return statistics.median(v) if v else float("nan")


# (label, kvraft row, etcd row, field, target ratio, higher is better)
def table_spec() -> list[tuple[str, dict[str, Any], dict[str, Any], str, float, bool]]:
    spec: list[tuple[str, dict[str, Any], dict[str, Any], str, float, bool]] = []
    for op, c, field, target, up in (("put", 1, "p50_ms", 1.0, False), ("put", 1, "ops_s", 1.0, True),
                                     ("put", 64, "ops_s", 1.5, True),
                                     ("get", 64, "ops_s", 2.0, True)):
        spec.append((f"raw HTTP {op} c={c} {field}",
                     {"system": "kvraft-1g", "kind": "raw", "op": op, "level": c},
                     {"system": "etcd", "kind": "raw", "op": op, "level": c}, field, target, up))
    for g in (1, 2):
        for op in ("put", "get"):
            for kind, level, elevel in (("sync", 1, 1), ("sync", 16, 16), ("async", 1, 1),
                                        ("async", 64, 64)):
                name = "Client" if kind == "sync" else "AsyncClient"
                unit = "threads" if kind == "sync" else "c="
                lv = f"{level} {unit}" if kind == "sync" else f"c={level}"
                spec.append((f"{g}g {name} {op} {lv} ops/s",
                             {"system": f"kvraft-{g}g", "kind": kind, "op": op, "level": level},
                             {"system": "etcd", "kind": "etcd3", "op": op, "level": elevel},
                             "ops_s", 1.0, True))
            if op == "put":
                spec.append((f"{g}g Client put 1 thread p50_ms",
                             {"system": f"kvraft-{g}g", "kind": "sync", "op": "put", "level": 1},
                             {"system": "etcd", "kind": "etcd3", "op": "put", "level": 1},
                             "p50_ms", 1.0, False))
    return spec


def report(rows: list[dict[str, Any]], png: Path | None) -> str:
    lines = ["| workload | kvraft | etcd | ratio | target | |", "|---|---:|---:|---:|---:|---|"]
    for label, k, e, field, target, up in table_spec():
        kv, ev = med(rows, field, **k), med(rows, field, **e)
        ratio = kv / ev if ev else float("nan")
        ok = ratio >= target if up else ratio <= target
        lines.append(f"| {label} | {kv:,.2f} | {ev:,.2f} | {ratio:.2f} | "
                     f"{'≥' if up else '≤'}{target:g} | {'ok' if ok else 'MISS'} |")
    for op in ("put", "get"):
        one = med(rows, "ops_s", system="kvraft-1g", kind="async", op=op, level=64)
        two = med(rows, "ops_s", system="kvraft-2g", kind="async", op=op, level=64)
        lines.append(f"| 2 groups / 1 group, AsyncClient {op} c=64 | {two:,.1f} | {one:,.1f} "
                     f"| {two / one:.2f} | ≥0.9 | {'ok' if two / one >= 0.9 else 'MISS'} |")
    lines += ["", "Raw HTTP against what Python can do here at all (`bench/python_floor.py`):", "",
              "| workload | etcd | kvraft | bare aiohttp | Python floor | kvraft / etcd "
              "| bare aiohttp / etcd |", "|---|---:|---:|---:|---:|---:|---:|"]
    for op, c, field in (("put", 1, "p50_ms"), ("put", 64, "ops_s"), ("get", 64, "ops_s")):
        vals = [med(rows, field, system=sname, kind="raw", op=op, level=c)
                for sname in ("etcd", "kvraft-1g", "python-bare", "python-floor")]
        cells = " | ".join("-" if v != v else f"{v:,.2f}" for v in vals)
        lines.append(f"| raw {op} c={c} {field} | {cells} | {vals[1] / vals[0]:.2f} "
                     f"| {vals[2] / vals[0]:.2f} |")
    if png is not None:
        chart(rows, png)
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = [("raw put c=1", "raw", "put", 1, "raw", 1), ("raw put c=64", "raw", "put", 64, "raw", 64),
            ("raw get c=64", "raw", "get", 64, "raw", 64),
            ("client put 1t", "sync", "put", 1, "etcd3", 1),
            ("client put 16t", "sync", "put", 16, "etcd3", 16),
            ("async put c=64", "async", "put", 64, "etcd3", 64),
            ("client get 1t", "sync", "get", 1, "etcd3", 1),
            ("client get 16t", "sync", "get", 16, "etcd3", 16),
            ("async get c=64", "async", "get", 64, "etcd3", 64)]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    w = 0.2
    for j, (sysname, field, color) in enumerate((("kvraft", "p50_ms", "#1f77b4"),
                                                 ("kvraft", "p99_ms", "#aec7e8"),
                                                 ("etcd", "p50_ms", "#d62728"),
                                                 ("etcd", "p99_ms", "#ff9896"))):
        ys = []
        for _, kk, op, lv, ek, elv in work:
            if sysname == "kvraft":
                ys.append(med(rows, field, system="kvraft-1g", kind=kk, op=op, level=lv))
            else:
                ys.append(med(rows, field, system="etcd", kind=ek, op=op, level=elv))
        ax.bar([i + (j - 1.5) * w for i in range(len(work))], ys, w, color=color,
               label=f"{sysname} {field.split('_')[0]}")
    ax.set_xticks(range(len(work)), [x[0] for x in work], rotation=20, ha="right")
    ax.set_ylabel("latency, ms (lower is better)")
    ax.set_yscale("log")
    ax.set_title("kvraft (1 data group) vs etcd 3.4, 3 replicas on one 2-core machine")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--raw-n", type=int, default=10000, help="requests per raw c=64 run")
    ap.add_argument("--client-ops", type=int, default=3000, help="operations per client run")
    ap.add_argument("--kvraft-python", default=sys.executable)
    ap.add_argument("--loadgen-python", default=sys.executable, help="aiohttp + uvloop")
    ap.add_argument("--etcd3-python", default="/tmp/etcd3venv/bin/python")
    ap.add_argument("--kvraft-args", default="", help="extra `kvraft serve` arguments")
    ap.add_argument("--client-args", default="",
                    help="extra bench/client_load.py arguments (e.g. '--read-from any')")
    ap.add_argument("--out", default="/tmp/kvraft-vs-etcd.jsonl")
    ap.add_argument("--png", default="", help="write the latency chart here")
    ap.add_argument("--report-only", action="store_true", help="tabulate --out again")
    ap.add_argument("--only", choices=["etcd", "kvraft"], default=None)
    ap.add_argument("--no-python", action="store_true",
                    help="skip the bare aiohttp ceiling and the Python floor")
    a = ap.parse_args()
    if a.report_only:
        rows = [json.loads(line) for line in open(a.out)]
    else:
        run = Runner(a)
        for rnd in range(1, a.rounds + 1):
            t0 = time.monotonic()
            print(f"== round {rnd}", flush=True)
            if a.only in (None, "etcd"):
                run.etcd(rnd)
            if a.only in (None, "kvraft"):
                run.kvraft(rnd, 1)
                run.kvraft(rnd, 2)
            if a.only is None and not a.no_python:
                run.python(rnd, "bare")
                run.python(rnd, "floor")
            print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
        rows = run.rows
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print()
    print(report(rows, Path(a.png) if a.png else None))


if __name__ == "__main__":
    main()
