#!/usr/bin/env python3
"""Add a node to a group holding N keys (default 1M, 16-byte keys, 100-byte values):
time from `member add` to voter (learner, InstallSnapshot of the whole state, catch-up
from the log, promotion), and the latency of client writes before (no change) and
during it.

  python bench/member_add.py [--keys 1000000] [--json]

The keys are written straight into each replica's state.db while the cluster is down,
then a snapshot (taken under the write load, every --snapshot-entries) covers them and
compacts the log, so the new node can only catch up through InstallSnapshot.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from kvraft.testing.cluster import LocalCluster
from kvraft.testing.migration import _p, _Writer, rss_kib, seed_keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--before-s", type=float, default=10.0)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    root = a.dir or Path(tempfile.mkdtemp(prefix="kvraft-member-"))
    c = LocalCluster(root / "c", groups=(0, 1), tick_ms=50,
                     extra_args=["--snapshot-entries", "2000"])
    c.start()
    writer: _Writer | None = None
    try:
        c.stop()
        value = "v" * a.value_bytes
        for i in c.ids:
            seed_keys(c.data_dir(i) / "group-1" / "state.db",
                      ((f"k{j:015d}", value) for j in range(a.keys)))
        c.bootstrap_on_start = False
        c.start()
        lead = c.wait_for_leader(timeout_s=60)
        writer = _Writer(c.addr_list, [f"w{j}" for j in range(32)], a.concurrency)
        writer.thread.start()
        t_end = time.monotonic() + a.before_s
        while time.monotonic() < t_end or (c.status(lead) or {}).get("snapshot_index", 0) == 0:
            time.sleep(0.1)  # the "before" phase also waits for a snapshot over the keys
        new = c.new_node(via=lead)
        writer.phase = "during"
        t0 = time.monotonic()
        out = c.member("add", new, timeout_s=1800.0)
        add_s = time.monotonic() - t0
        writer.phase = "after"
        st = c.status(new) or {}
        rss = rss_kib(c.procs[new].pid)
        writer.stop.set()
        writer.thread.join(timeout=30)
        lb, ld = writer.lat["before"], writer.lat["during"]
        rep = {
            "keys": a.keys, "add_s": round(add_s, 2), "voters": out["voters"],
            "snapshots_installed": st.get("snapshot", {}).get("installed"),
            "new_node_applied": st.get("applied"), "new_node_rss_kib": rss[0],
            "writes_before": len(lb), "writes_during": len(ld), "errors": writer.errors,
            "p50_before_ms": round(statistics.median(lb) * 1000, 2) if lb else 0.0,
            "p50_during_ms": round(statistics.median(ld) * 1000, 2) if ld else 0.0,
            "p99_before_ms": round(_p(lb, 0.99), 2), "p99_during_ms": round(_p(ld, 0.99), 2),
        }
    finally:
        if writer is not None:
            writer.stop.set()
        c.stop()
    conn = sqlite3.connect(f"file:{c.data_dir(new) / 'group-1' / 'state.db'}?mode=ro", uri=True)
    try:
        rep["new_node_keys"] = conn.execute("SELECT COUNT(*) FROM kv WHERE k LIKE 'k%'").fetchone()[0]
    finally:
        conn.close()
    if a.json:
        print(json.dumps(rep))
        return
    for k, v in rep.items():
        print(f"{k:24s} {v}")


if __name__ == "__main__":
    main()
