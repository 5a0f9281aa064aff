"""Move one large range between two groups on separate processes, and measure it.

Used by ``bench/migrate_range.py`` (1M keys) and by the test that a migration never
holds a range in memory whole. The range's keys are written straight into the source
group's ``state.db`` on every replica while those nodes are stopped (identical on all
replicas, below the applied index: as if applied long ago), so that building a large
range takes seconds instead of a million writes through Raft.

Layout: process set A (3 nodes) hosts the controller and group 1; set B (3 nodes) hosts
group 2. The moved range is ``[prefix, prefix + "~")`` on group 1; writes to an
unaffected range of group 1 and to group 2's own range measure the latency seen by
the rest of the cluster before and during the move.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvraft.client import AsyncClient
from kvraft.testing.cluster import LocalCluster


def seed_keys(db: Path, items: Iterator[tuple[str, str]], batch: int = 50_000) -> int:
    """Insert (key, value) rows into a stopped replica's state.db; returns the count."""
    conn = sqlite3.connect(db)
    n = 0
    try:
        while True:
            rows = [kv for _, kv in zip(range(batch), items, strict=False)]
            if not rows:
                break
            with conn:
                conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", rows)
            n += len(rows)
    finally:
        conn.close()
    return n


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


@dataclass(slots=True)
class MoveReport:
    keys: int
    bytes: int
    move_s: float
    gc_s: float
    rss_before_kib: dict[str, int]
    rss_peak_kib: dict[str, int]
    p99_before_ms: float
    p99_during_ms: float
    p50_before_ms: float
    p50_during_ms: float
    writes_before: int
    writes_during: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.move_s if self.move_s > 0 else 0.0

    def rows(self) -> list[tuple[str, str]]:
        grow = {k: self.rss_peak_kib[k] - self.rss_before_kib[k] for k in self.rss_peak_kib}
        return [
            ("keys moved", f"{self.keys:,}"),
            ("bytes moved (keys + values)", f"{self.bytes / 2**20:.1f} MiB"),
            ("move wall time (until the new owner serves)", f"{self.move_s:.1f} s"),
            ("throughput", f"{self.bytes_per_s / 2**20:.2f} MiB/s, "
                           f"{self.keys / self.move_s:,.0f} keys/s"),
            ("old owner deleted its copy after", f"{self.gc_s:.1f} s more"),
            ("peak RSS growth, source nodes (KiB)",
             ", ".join(f"{k}: +{v:,}" for k, v in grow.items() if k.startswith("a"))),
            ("peak RSS growth, destination nodes (KiB)",
             ", ".join(f"{k}: +{v:,}" for k, v in grow.items() if k.startswith("b"))),
            ("unaffected writes p50 before / during", f"{self.p50_before_ms:.1f} / "
                                                      f"{self.p50_during_ms:.1f} ms"),
            ("unaffected writes p99 before / during", f"{self.p99_before_ms:.1f} / "
                                                      f"{self.p99_during_ms:.1f} ms "
                                                      f"({self.p99_during_ms / max(self.p99_before_ms, 1e-9):.2f}x)"),
        ]


def _p(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


class _Writer:
    """Closed-loop writers to unaffected keys; latencies split by phase."""

    def __init__(self, addrs: list[str], keys: list[str], concurrency: int) -> None:
        self.addrs = addrs
        self.keys = keys
        self.concurrency = concurrency
        self.phase = "before"
        self.lat: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        self.stop = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with AsyncClient(self.addrs, timeout_s=10.0) as c:
            async def loop(i: int) -> None:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    key = self.keys[(i + n) % len(self.keys)]
                    t0 = time.perf_counter()
                    try:
                        await c.put(key, f"{i}.{n}")
                    except Exception:
                        self.errors += 1
                        continue
                    self.lat[self.phase].append(time.perf_counter() - t0)
            await asyncio.gather(*(loop(i) for i in range(self.concurrency)))


def run_move(root: Path, *, keys: int, value_bytes: int = 100, prefix: str = "k",
             chunk_bytes: int = 256 << 10, before_s: float = 5.0, concurrency: int = 4,
             tick_ms: int = 50, timeout_s: float = 1800.0,
             extra_args: list[str] | None = None) -> MoveReport:
    """Seed ``keys`` keys of ``[prefix, prefix~)`` on group 1, move them to group 2."""
    args = ["--shard-chunk-bytes", str(chunk_bytes), "--snapshot-entries", "2000",
            *(extra_args or [])]
    a = LocalCluster(root / "a", groups=(0, 1), bootstrap=False, tick_ms=tick_ms,
                     extra_args=args)
    b = LocalCluster(root / "b", groups=(2,), first_id=4, controller=a.controller,
                     secret=a.secret, tick_ms=tick_ms, extra_args=args)
    a.start()
    b.start()
    writer: _Writer | None = None
    try:
        # group 2: ["", "0"); group 1: every other range, the moved one among them
        a.join_groups(extra={2: b.members()}, timeout_s=120)
        for key in ("0", prefix, prefix + "~"):
            a.ctrl({"op": "split", "key": key})
        num = 0
        for _rid, start, _end, gid, _v in a.ctrl({"op": "split", "key": "~"})["config"][
                "ranges"]:
            want = 2 if start == "" else 1
            if gid != want:
                num = a.ctrl({"op": "move", "key": start, "to": want})["num"]
        num = max(num, a.ctrl({"op": "split", "key": "~~"})["num"])
        a.wait_shards(1, num, timeout_s=120)
        b.wait_shards(2, num, timeout_s=120)
        a.stop()
        value = "v" * value_bytes
        width = 15
        for i in a.ids:
            db = a.data_dir(i) / "group-1" / "state.db"
            seed_keys(db, ((f"{prefix}{j:0{width}d}", value) for j in range(keys)))
        a.start()
        a.wait_shards(1, num, timeout_s=120)
        size = keys * (len(prefix) + width + value_bytes)
        unaffected = [f"{c}x{j}" for c in ("0", "p") for j in range(8)] + \
                     [f"!{j}" for j in range(8)]  # "0.."/"p.." on group 1, "!.." on group 2
        writer = _Writer(a.addr_list + b.addr_list, unaffected, concurrency)
        writer.thread.start()
        t_end = time.monotonic() + before_s
        while time.monotonic() < t_end:
            time.sleep(0.05)
        pids = {f"a{i}": a.procs[i].pid for i in a.ids} | {f"b{i}": b.procs[i].pid for i in b.ids}
        rss0 = {k: rss_kib(p)[0] for k, p in pids.items()}
        peak = dict(rss0)
        writer.phase = "during"
        t0 = time.monotonic()
        moved = a.ctrl({"op": "move", "key": prefix, "to": 2})["num"]
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            for k, p in pids.items():
                peak[k] = max(peak[k], rss_kib(p)[0])
            v = b.shard_view(2)
            if v is not None and v["num"] >= moved and not v["pulling"]:
                break
            time.sleep(0.1)
        move_s = time.monotonic() - t0
        writer.phase = "after"
        while time.monotonic() < deadline:
            for k, p in pids.items():
                peak[k] = max(peak[k], rss_kib(p)[0])
            v = a.shard_view(1)
            if v is not None and not v["outgoing"]:
                break
            time.sleep(0.1)
        gc_s = time.monotonic() - t0 - move_s
        writer.stop.set()
        writer.thread.join(timeout=30)
        lb, ld = writer.lat["before"], writer.lat["during"]
        return MoveReport(keys=keys, bytes=size, move_s=move_s, gc_s=gc_s,
                          rss_before_kib=rss0, rss_peak_kib=peak,
                          p99_before_ms=_p(lb, 0.99), p99_during_ms=_p(ld, 0.99),
                          p50_before_ms=statistics.median(lb) * 1000 if lb else 0.0,
                          p50_during_ms=statistics.median(ld) * 1000 if ld else 0.0,
                          writes_before=len(lb), writes_during=len(ld),
                          extra={"errors": writer.errors, "num": moved})
    finally:
        if writer is not None:
            writer.stop.set()
        b.stop()
        a.stop()
