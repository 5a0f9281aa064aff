"""A range migration never holds the range in memory whole (measured on real processes).

A range of about 60 MiB moves between two groups on separate node processes while
each node's resident memory is sampled. With the log bounded to a few MiB in memory
(snapshots by bytes), neither side grows by anything near the range's size: the source
streams chunks of 256 KiB from SQLite, the destination installs them through its log
and compacts it. Holding the range whole (a list of its rows, a JSON document of it, or
the uncompacted log of its chunks) would grow one side by at least the range's size.
"""

from __future__ import annotations

from pathlib import Path

from kvraft.testing.migration import run_move

MiB = 1 << 20


def test_moving_a_large_range_keeps_memory_bounded(tmp_path: Path) -> None:
    r = run_move(tmp_path, keys=300_000, value_bytes=200, before_s=1.0, concurrency=2,
                 extra_args=["--snapshot-log-bytes", str(4 * MiB),
                             "--snapshot-catchup-bytes", str(2 * MiB),
                             "--shard-max-copy-bytes-per-s", str(4 * MiB)])
    for k, v in r.rows():
        print(f"{k:48s} {v}")
    assert r.bytes > 60 * MiB
    grow = {k: (r.rss_peak_kib[k] - r.rss_before_kib[k]) * 1024 for k in r.rss_peak_kib}
    src = max(v for k, v in grow.items() if k.startswith("a"))
    dst = max(v for k, v in grow.items() if k.startswith("b"))
    assert src < r.bytes * 0.25, f"a source node grew by {src / MiB:.1f} MiB"
    assert dst < r.bytes * 0.5, f"a destination node grew by {dst / MiB:.1f} MiB"
    assert r.extra["errors"] == 0
