"""``kvraft chaos``: recorded clients + the nemesis + the checkers, in one bounded run.

1. Start a local cluster of real node processes on 127.0.0.1.
2. Run N concurrent recording clients (each its own session) on a few keys: the
   ``k*`` keys get get/put/append/delete with unique values, the ``a*`` keys get only
   appends of unique tokens and reads.
3. Meanwhile the nemesis injects faults on a seeded schedule.
4. Heal everything, wait for a leader, read every key once more (recorded too).
5. Check: the history is linearizable (``kvraft.check``); every acknowledged append
   appears exactly once in the final value of its key, an append of unknown outcome at
   most once, and a failed one (definitely not applied) never.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvraft import errors
from kvraft.chaos.nemesis import Nemesis, NemesisSettings
from kvraft.check import check_history
from kvraft.check.history import Operation
from kvraft.client import AsyncClient
from kvraft.recorder import HistoryRecorder
from kvraft.testing.cluster import LocalCluster


@dataclass(slots=True)
class ChaosSettings:
    seed: int
    nodes: int = 3
    duration_s: float = 30.0
    clients: int = 8
    mixed_keys: int = 3
    append_keys: int = 2
    append_key_epoch_s: float = 2.0
    """Append-only keys are replaced by fresh ones this often, so values stay small."""
    mixed_key_epoch_s: float = 10.0
    nemesis: NemesisSettings = field(default_factory=NemesisSettings)
    data_dir: Path | None = None
    history_path: Path | None = None
    check_budget_s: float = 0.0
    """Time budget of the linearizability check (0: max(120 s, the run's duration))."""
    op_timeout_s: float = 2.0
    tick_ms: int = 25
    snapshot_entries: int = 300
    """Small, so that runs exercise snapshots, compaction and InstallSnapshot."""
    groups: int = 1
    """Data groups (with the controller, on every node); > 1 spreads the keys over them."""
    tls: bool = False
    """Mutual TLS between the nodes, and the clients over TLS with a token."""
    lease_reads: bool = False
    """Nodes serve reads under leader leases (``replica.lease_reads``)."""
    follower_reads: bool = False
    """Clients spread their reads over every member (``read_from="any"``): followers
    serve them with a read index from their leader."""


@dataclass(slots=True)
class ChaosReport:
    seed: int
    outcomes: Counter[str]
    faults: Counter[str]
    snapshots: Counter[str]
    verdict: str
    anomalies: list[str]
    elapsed_s: float
    check: dict[str, Any]
    events: list[str]
    data_dir: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok" and not self.anomalies

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {sum(self.outcomes.values())} operations "
            f"(ok {self.outcomes['ok']}, failed {self.outcomes['fail']}, "
            f"unknown {self.outcomes['unknown']}) in {self.elapsed_s:.1f}s",
            "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
                          or "none"),
            f"snapshots: taken {self.snapshots['taken']}, installed from a leader "
            f"{self.snapshots['installed']}"
            + (f"; reads served under a lease {self.snapshots['leased_reads']} (counted "
               "since each node's last start)" if self.snapshots["leased_reads"] else "")
            + (f"; reads served by followers {self.snapshots['follower_reads']} (counted "
               "since each node's last start)" if self.snapshots["follower_reads"] else ""),
            f"linearizability: {self.verdict}",
        ]
        lines += [f"ANOMALY: {a}" for a in self.anomalies]
        lines.append("PASS" if self.ok else f"FAIL (replay with --seed {self.seed}; "
                                             f"data in {self.data_dir})")
        return "\n".join(lines)


class KeyEpochs:
    """Keys in use: ``count`` fresh keys named ``<prefix><epoch>.<j>`` every ``epoch_s``.

    Rotating keys keeps values and per-key histories bounded in long runs.
    """

    def __init__(self, prefix: str, count: int, epoch_s: float, spread: str = "") -> None:
        self.prefix = prefix
        self.spread = spread
        """First characters given to the keys in turn (to spread them over ranges)."""
        self.count = count
        self.epoch_s = epoch_s
        self.t0 = time.monotonic()
        self.used: set[str] = set()

    def current(self) -> list[str]:
        epoch = int((time.monotonic() - self.t0) / self.epoch_s)
        sp = self.spread
        keys = [f"{sp[j % len(sp)] if sp else ''}{self.prefix}{epoch}.{j}"
                for j in range(self.count)]
        self.used.update(keys)
        return keys


async def _client_loop(c: AsyncClient, rng: random.Random, keys: KeyEpochs, akeys: KeyEpochs,
                       stop: threading.Event, appended: dict[str, str]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        use_append_key = akeys.count > 0 and rng.random() < 0.4
        try:
            if use_append_key:
                key = rng.choice(akeys.current())
                if rng.random() < 0.7:
                    token = f"[{c.name}.{n}]"
                    appended[token] = key
                    await c.append(key, token)
                else:
                    await c.get(key)
                continue
            key = rng.choice(keys.current())
            r = rng.random()
            if r < 0.4:
                await c.get(key)
            elif r < 0.7:
                await c.put(key, f"{c.name}.{n}")
            elif r < 0.9:
                await c.append(key, f"+{c.name}.{n}")
            else:
                await c.delete(key)
        except errors.KvraftError:
            await asyncio.sleep(0.01)


async def _workload(cfg: ChaosSettings, cluster: LocalCluster, recorder: HistoryRecorder,
                    stop: threading.Event, appended: dict[str, str], keys: KeyEpochs,
                    akeys: KeyEpochs) -> None:
    clients = [cluster.async_client(timeout_s=cfg.op_timeout_s, attempt_timeout_s=0.5,
                                    recorder=recorder, name=f"c{i}",
                                    read_from="any" if cfg.follower_reads else "leader")
               for i in range(cfg.clients)]
    try:
        await asyncio.gather(*(
            _client_loop(c, random.Random(cfg.seed * 1000 + i), keys, akeys, stop, appended)
            for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()


async def _final_reads(cluster: LocalCluster, keys: list[str], recorder: HistoryRecorder
                       ) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    async with cluster.async_client(timeout_s=30.0, recorder=recorder, name="final") as c:
        for k in keys:
            out[k] = await c.get(k)
    return out


def _append_anomalies(ops: list[Operation], appended: dict[str, str],
                      final: dict[str, str | None],
                      append_keys: set[str] | None = None) -> list[str]:
    anomalies = []
    for op in ops:
        is_append_key = (op.key in append_keys) if append_keys is not None \
            else op.key.startswith("a")
        if op.op != "append" or not is_append_key or op.value is None:
            continue
        count = (final.get(op.key) or "").count(op.value)
        if op.outcome == "ok" and count != 1:
            anomalies.append(f"acknowledged append {op.value} to {op.key} appears {count} times")
        elif op.outcome == "unknown" and count > 1:
            anomalies.append(f"append {op.value} of unknown outcome appears {count} times")
        elif op.outcome == "fail" and count != 0:
            anomalies.append(f"failed append {op.value} appears {count} times")
    return anomalies


def _snapshot_counts(c: LocalCluster, groups: int = 1) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in c.ids:
        st = c.status(i)
        if st is not None:
            counts["taken"] += st["snapshot"]["taken"]
            counts["installed"] += st["snapshot"]["installed"]
            counts["leased_reads"] += (st.get("lease") or {}).get("reads", 0)
        for g in range(1, groups + 1):
            gst = st if g == 1 else c.status(i, g)
            if gst is not None:
                counts["follower_reads"] += gst.get("follower_reads", 0)
    return counts


def run_chaos(cfg: ChaosSettings, *, cluster: LocalCluster | None = None) -> ChaosReport:
    """One bounded chaos run; see the module docstring."""
    t0 = time.monotonic()
    root = cfg.data_dir or Path(tempfile.mkdtemp(prefix=f"kvraft-chaos-{cfg.seed}-"))
    own_cluster = cluster is None
    c = cluster or LocalCluster(root, nodes=cfg.nodes, tick_ms=cfg.tick_ms, extra_args=[
        "--snapshot-entries", str(cfg.snapshot_entries),
        "--snapshot-catchup-entries", str(max(1, cfg.snapshot_entries // 5)),
        *(["--lease-reads", "1"] if cfg.lease_reads else [])],
        groups=tuple(range(cfg.groups + 1)), tls=cfg.tls, auth=cfg.tls)
    recorder = HistoryRecorder(cfg.history_path)
    snap_counts: Counter[str] = Counter()
    appended: dict[str, str] = {}
    spread = cfg.nemesis.split_chars if cfg.groups > 1 else ""
    mkeys = KeyEpochs("k", cfg.mixed_keys, cfg.mixed_key_epoch_s, spread)
    akeys = KeyEpochs("a", cfg.append_keys, cfg.append_key_epoch_s, spread)
    nemesis = Nemesis(c, random.Random(cfg.seed), cfg.nemesis)
    stop = threading.Event()
    try:
        if own_cluster:
            c.start()
        c.wait_for_leader(timeout_s=30)
        deadline = time.monotonic() + cfg.duration_s
        nem = threading.Thread(target=nemesis.run,
                               args=(lambda: stop.is_set() or time.monotonic() > deadline,),
                               name="nemesis", daemon=True)
        nem.start()
        timer = threading.Timer(cfg.duration_s, stop.set)
        timer.start()
        try:
            asyncio.run(_workload(cfg, c, recorder, stop, appended, mkeys, akeys))
        finally:
            stop.set()
            timer.cancel()
            nem.join(timeout=60)
        nemesis.heal_all()
        c.wait_for_leader(timeout_s=30)
        keys = sorted(mkeys.used) + sorted(akeys.used)
        final = asyncio.run(_final_reads(c, keys, recorder))
        snap_counts = _snapshot_counts(c, cfg.groups)
    finally:
        ops = recorder.close()
        if own_cluster:
            c.stop()
    result = check_history(ops, time_budget_s=cfg.check_budget_s or max(120.0, cfg.duration_s))
    anomalies = _append_anomalies(ops, appended, final, set(akeys.used))
    return ChaosReport(seed=cfg.seed, outcomes=Counter(o.outcome for o in ops),
                       faults=nemesis.counts, snapshots=snap_counts,
                       verdict=result.verdict, anomalies=anomalies,
                       elapsed_s=time.monotonic() - t0, check=result.to_json(),
                       events=nemesis.events, data_dir=str(root))


def report_json(r: ChaosReport) -> str:
    return json.dumps({"seed": r.seed, "ok": r.ok, "verdict": r.verdict,
                       "outcomes": dict(r.outcomes), "faults": dict(r.faults),
                       "snapshots": dict(r.snapshots),
                       "anomalies": r.anomalies, "elapsed_s": round(r.elapsed_s, 2)})
