#!/usr/bin/env python3
"""Measure snapshot and restore of a large state (default 1,000,000 keys).

  python bench/snapshot_size.py build  DIR [--keys N]   # state.db via the real apply path
  python bench/snapshot_size.py snapshot DIR            # SQLite backup + sha256, like a replica
  python bench/snapshot_size.py upload DIR --endpoint-url URL   # to S3 (moto), like a leader

Run each step under /usr/bin/time -v to read wall time and peak RSS; `kvraft restore`
is the restore step (see bench/snapshot_1m.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kvraft.kv import Command, Op
from kvraft.raft.types import ConfState, Entry
from kvraft.storage import snapshots
from kvraft.storage.statedb import StateStore

CONF = ConfState(frozenset({1, 2, 3}))


def build(d: Path, keys: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    s = StateStore(d / "state.db")
    value = "v" * 100
    t0 = time.monotonic()
    batch = 10_000
    for start in range(0, keys, batch):
        s.apply_batch([Entry(i + 1, 1, Command(Op.PUT, f"k{i:015d}", value).encode())
                       for i in range(start, min(keys, start + batch))])
    s.set_conf(CONF)
    s.close()
    print(f"built {keys} keys in {time.monotonic() - t0:.1f}s: "
          f"{(d / 'state.db').stat().st_size / 2**20:.1f} MiB")


def snapshot(d: Path) -> None:
    t0 = time.monotonic()
    snap = snapshots.create_snapshot(d / "state.db", d / "snapshots", CONF)
    print(f"snapshot {snap.index}: {snap.size / 2**20:.1f} MiB sha256 {snap.sha256[:16]} "
          f"in {time.monotonic() - t0:.2f}s")


def upload(d: Path, endpoint_url: str) -> None:
    from kvraft.storage.s3 import S3SnapshotStore

    snap = snapshots.list_snapshots(d / "snapshots")[-1]
    store = S3SnapshotStore(bucket="kvraft-bench", prefix="kvraft", cluster="big",
                            endpoint_url=endpoint_url)
    store.ensure_bucket()
    t0 = time.monotonic()
    m, up = store.upload(1, str(snap.path), index=snap.index, term=snap.term,
                         membership={"voters": [1, 2, 3]})
    print(f"uploaded={up} {m.size / 2**20:.1f} MiB in {time.monotonic() - t0:.2f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["build", "snapshot", "upload"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--endpoint-url", default="")
    a = ap.parse_args()
    if a.step == "build":
        build(a.dir, a.keys)
    elif a.step == "snapshot":
        snapshot(a.dir)
    else:
        if not a.endpoint_url:
            sys.exit("--endpoint-url is required")
        upload(a.dir, a.endpoint_url)


if __name__ == "__main__":
    main()
