"""Seeded chaos runs against real node processes, one per group of fault kinds.

Each run records every client operation, injects faults on a schedule drawn from
its seed, heals, and checks linearizability and exactly-once appends. The seed is
printed; replay a failure with ``kvraft chaos --seed S --faults ...``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kvraft.chaos import ChaosSettings, NemesisSettings, run_chaos
from kvraft.chaos.runner import _append_anomalies
from kvraft.check.history import Operation

RUNS = [
    # (seed, nodes, fault kinds, snapshot every N entries, data groups, TLS and tokens)
    (121, 3, ("kill", "kill-leader", "pause", "short-pause"), 300, 1, False),
    (102, 3, ("partition", "isolate-leader", "one-way"), 300, 1, False),
    (103, 5, ("bridge", "partition", "kill-leader"), 300, 1, False),
    (104, 3, ("delay", "loss", "majority-down"), 300, 1, False),
    # frequent snapshots and installs, streamed over mutual TLS
    (105, 3, ("kill", "kill-leader", "partition"), 100, 1, True),
    # a sharded cluster: ranges move, split, merge and groups leave and join under faults
    (106, 3, ("move", "split", "merge", "leave", "kill-leader", "partition"), 200, 2, False),
    (107, 3, ("move", "join", "split", "kill", "pause", "loss"), 200, 2, True),
    # membership: members replaced (new ids), removed and re-added, leadership moved
    (108, 3, ("replace", "remove-readd", "transfer", "kill-leader", "partition"), 200, 1, True),
]
# Other reads: "follower", the clients spread their reads over every member
# (read_from="any"); "lease", the nodes serve reads under leader leases; or both.
READ_RUNS = [
    (122, 3, ("kill-leader", "isolate-leader", "short-pause", "loss"), 300, 1, False,
     "follower"),
    (110, 3, ("move", "split", "kill", "partition"), 200, 2, False, "follower"),
    (123, 3, ("short-pause", "isolate-leader", "kill-leader", "one-way"), 300, 1, False,
     "lease"),
    # leases and follower reads: the leader answers forwarded reads under its lease
    (124, 3, ("short-pause", "isolate-leader", "pause", "loss"), 300, 1, False,
     "lease+follower"),
]


@pytest.mark.parametrize(
    ("seed", "nodes", "kinds", "snap", "groups", "tls", "reads"),
    [(*r, "leader") for r in RUNS] + READ_RUNS,
    ids=[f"seed{r[0]}{'-tls' if r[5] else ''}" for r in RUNS]
    + [f"seed{r[0]}-{r[6]}-reads" for r in READ_RUNS])
def test_chaos_run(tmp_path: Path, seed: int, nodes: int, kinds: tuple[str, ...],
                   snap: int, groups: int, tls: bool, reads: str) -> None:
    follower = "follower" in reads
    print(f"chaos seed={seed} nodes={nodes} groups={groups} faults={','.join(kinds)} "
          f"snapshot-entries={snap}{' --tls' if tls else ''}"
          f"{' --follower-reads' if follower else ''}"
          f"{' --lease-reads' if 'lease' in reads else ''}")
    cfg = ChaosSettings(seed=seed, nodes=nodes, duration_s=15.0 if groups == 1 else 20.0,
                        nemesis=NemesisSettings(kinds=kinds), data_dir=tmp_path / "c",
                        history_path=tmp_path / "history.jsonl", snapshot_entries=snap,
                        groups=groups, tls=tls, follower_reads=follower,
                        lease_reads="lease" in reads)
    report = run_chaos(cfg)
    print(report.summary())
    print("\n".join(report.events))
    assert report.ok, report.summary()
    assert sum(report.faults.values()) >= 2, "the nemesis injected too few faults"
    assert set(report.faults) <= set(kinds)
    # (the seeds of runs with short pauses are chosen to draw one first)
    assert report.faults["short-pause"] >= 1 or "short-pause" not in kinds
    assert report.outcomes["ok"] > 500, "the clients made too little progress"
    assert report.snapshots["taken"] > 0, "no snapshot was taken under load"
    if follower:
        assert report.snapshots["follower_reads"] > 0, "no read was served by a follower"
    if "lease" in reads:
        assert report.snapshots["leased_reads"] > 0, "no read was served under a lease"
    member_faults = sum(n for k, n in report.faults.items()
                        if k in ("replace", "remove-readd", "transfer"))
    assert member_faults >= 1 or not {"replace", "remove-readd", "transfer"} & set(kinds)
    if groups > 1:
        shard_faults = sum(n for k, n in report.faults.items()
                           if k in ("move", "split", "merge", "join", "leave"))
        assert shard_faults >= 1, "no range moved, split or merged during the run"


def _op(i: int, value: str, outcome: str) -> Operation:
    return Operation(id=i, client="c", op="append", key="a0", value=value, result=None,
                     invoke_ns=i, complete_ns=i + 1 if outcome != "unknown" else None,
                     outcome=outcome)  # type: ignore[arg-type]


def test_append_check_finds_doubles_losses_and_ghosts() -> None:
    ops = [_op(1, "[x]", "ok"), _op(2, "[y]", "ok"), _op(3, "[z]", "fail"), _op(4, "[u]", "unknown")]
    assert _append_anomalies(ops, {}, {"a0": "[x][y][u]"}) == []
    found = _append_anomalies(ops, {}, {"a0": "[x][x][z][u][u]"})
    assert Counter(a.split()[0] for a in found) == Counter(
        {"acknowledged": 2, "failed": 1, "append": 1})
