#!/usr/bin/env python3
"""Move a range of N keys (default 1M, 16-byte keys, 100-byte values) between two groups
on separate processes; print wall time, bytes/s, peak RSS growth of both sides and the
latency of writes to unaffected ranges before and during the move.

  python bench/migrate_range.py [--keys 1000000] [--chunk-bytes 262144] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kvraft.testing.migration import run_move


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--chunk-bytes", type=int, default=256 << 10)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra option for every node, e.g. --serve-arg=--snapshot-log-bytes=4194304")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    root = a.dir or Path(tempfile.mkdtemp(prefix="kvraft-migrate-"))
    r = run_move(root, keys=a.keys, value_bytes=a.value_bytes, chunk_bytes=a.chunk_bytes,
                 concurrency=a.concurrency,
                 extra_args=[x for arg in a.serve_arg for x in arg.split("=", 1)])
    if a.json:
        print(json.dumps({"keys": r.keys, "bytes": r.bytes, "move_s": round(r.move_s, 2),
                          "gc_s": round(r.gc_s, 2), "bytes_per_s": round(r.bytes_per_s),
                          "rss_before_kib": r.rss_before_kib, "rss_peak_kib": r.rss_peak_kib,
                          "p50_before_ms": round(r.p50_before_ms, 2),
                          "p50_during_ms": round(r.p50_during_ms, 2),
                          "p99_before_ms": round(r.p99_before_ms, 2),
                          "p99_during_ms": round(r.p99_during_ms, 2), **r.extra}))
        return
    for k, v in r.rows():
        print(f"{k:48s} {v}")


if __name__ == "__main__":
    main()
