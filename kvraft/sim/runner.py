"""Command line: run many random seeds, or replay one seed with a readable trace.

    python -m kvraft.sim --seeds 200 --start 1 --nodes 5 --ticks 2000
    python -m kvraft.sim --seeds 50                 # seeds drawn from the OS, printed
    python -m kvraft.sim --seed 1234 -v             # replay one seed with a trace
    python -m kvraft.sim --seeds 300 --start 1 --membership   # with membership changes
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.raft import RaftCore
from kvraft.sim.checkers import SafetyViolation
from kvraft.sim.cluster import Cluster
from kvraft.sim.config import membership_rng, profile_for_seed, snapshot_rng
from kvraft.sim.node import CoreFactory


@dataclass(slots=True)
class SeedResult:
    seed: int
    nodes: int
    ticks: int
    ok: bool
    error: str = ""
    summary: str = ""
    seconds: float = 0.0


def make_cluster(seed: int, nodes: int = 3, ticks: int = 1000, *, verbose: int = 0,
                 core_factory: CoreFactory = RaftCore, membership: bool = False,
                 out: Callable[[str], None] = print, **overrides: Any) -> Cluster:
    """The cluster of a seed: its fault profile is drawn from the seed's generator (the
    snapshot parameters from :func:`~kvraft.sim.config.snapshot_rng`; with
    ``membership``, random membership changes from
    :func:`~kvraft.sim.config.membership_rng`)."""
    rng = random.Random(seed)
    cfg = profile_for_seed(rng, nodes, ticks, snap_rng=snapshot_rng(seed),
                           member_rng=membership_rng(seed) if membership else None,
                           **overrides)
    return Cluster(seed, cfg, rng=rng, core_factory=core_factory, verbose=verbose, out=out)


def run_seed(seed: int, nodes: int = 3, ticks: int = 1000, *, verbose: int = 0,
             core_factory: CoreFactory = RaftCore, membership: bool = False,
             out: Callable[[str], None] = print, **overrides: Any) -> SeedResult:
    """Run one seed; a failure is reported in the result, never raised."""
    t0 = time.perf_counter()
    res = SeedResult(seed, nodes, ticks, ok=True)
    cluster = None
    try:
        cluster = make_cluster(seed, nodes, ticks, verbose=verbose, core_factory=core_factory,
                               membership=membership, out=out, **overrides)
        cluster.run()
    except SafetyViolation as e:
        res.ok, res.error = False, str(e)
    except Exception as e:  # a crash of the core or the simulator is a failure too
        tick = cluster.now_ticks() if cluster is not None else 0
        res.ok = False
        res.error = f"[exception] seed={seed} tick={tick}: {type(e).__name__}: {e}"
        if verbose:
            out(traceback.format_exc())
    if cluster is not None:
        res.summary = cluster.summary()
        if verbose and not res.ok:
            out("state: " + cluster.describe())
    res.seconds = time.perf_counter() - t0
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvraft.sim",
                                 description="Deterministic Raft cluster simulator.")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=0, help="number of seeds to run")
    g.add_argument("--seed", type=int, help="replay this one seed")
    ap.add_argument("--start", type=int, help="first seed (seeds start..start+N-1); "
                    "without it seeds are drawn from the OS")
    ap.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    ap.add_argument("--ticks", type=int, default=1000, help="ticks of faulty operation")
    ap.add_argument("--membership", action="store_true",
                    help="also change the membership at random (learners added and "
                         "promoted, voters removed, the leader replaced)")
    ap.add_argument("--follower-reads", action="store_true",
                    help="send half the reads to followers, which ask their leader for "
                         "the read index and serve them from their own state")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="-v: faults, elections, commits; -vv: also clients; "
                         "-vvv: also every message")
    args = ap.parse_args(argv)
    extra: dict[str, Any] = {"follower_reads": 0.5} if args.follower_reads else {}

    if args.seed is not None:
        res = run_seed(args.seed, args.nodes, args.ticks, verbose=args.verbose,
                       membership=args.membership, **extra)
        print(("OK " if res.ok else "FAIL ") + f"seed={res.seed} nodes={res.nodes} "
              f"ticks={res.ticks} ({res.seconds:.1f}s) {res.summary}")
        if not res.ok:
            print(res.error)
        return 0 if res.ok else 1

    n = args.seeds or 1
    if args.start is not None:
        seeds = [args.start + k for k in range(n)]
    else:
        sysrng = random.SystemRandom()
        seeds = [sysrng.randrange(1 << 32) for _ in range(n)]
    m = (" --membership" if args.membership else "") + (
        " --follower-reads" if args.follower_reads else "")
    failures = 0
    t0 = time.perf_counter()
    for seed in seeds:
        if args.start is None:
            print(f"seed {seed}", flush=True)
        res = run_seed(seed, args.nodes, args.ticks, membership=args.membership, **extra)
        if not res.ok:
            failures += 1
            print(f"FAIL seed={seed} nodes={args.nodes} ticks={args.ticks}: {res.error}  "
                  f"(replay: python -m kvraft.sim --seed {seed} --nodes {args.nodes} "
                  f"--ticks {args.ticks}{m} -v)", flush=True)
    print(f"{len(seeds)} seeds, {failures} failed, nodes={args.nodes} ticks={args.ticks}{m} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
