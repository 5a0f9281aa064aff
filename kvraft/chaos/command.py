"""The ``kvraft chaos`` command."""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import click

from kvraft.chaos.nemesis import (
    ALL_KINDS,
    FAULT_KINDS,
    MEMBER_KINDS,
    SHARD_KINDS,
    NemesisSettings,
)
from kvraft.chaos.runner import ChaosSettings, report_json, run_chaos


@click.command("chaos")
@click.option("--seed", type=int, help="Schedule seed (random if omitted; always printed).")
@click.option("--runs", type=click.IntRange(1), default=1, show_default=True,
              help="Run this many seeds one after another (seed, seed+1, ...).")
@click.option("--duration", "duration_s", type=click.FloatRange(1, 86_400), default=30.0,
              show_default=True, help="Seconds of faults and load per run.")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option("--clients", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--groups", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Data groups (with the controller, on every node). With more than one, "
              "the shard faults (move, split, merge, join, leave) join the default kinds.")
@click.option("--faults", "kinds", help="Comma-separated fault kinds to draw from "
              f"[default: {','.join(FAULT_KINDS)}; with --groups > 1 also "
              f"{','.join(SHARD_KINDS)}]; membership faults on request: "
              f"{','.join(MEMBER_KINDS)}.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Where node data and logs go (a temporary directory by default).")
@click.option("--history", "history_path", type=click.Path(dir_okay=False),
              help="Also write the recorded history (JSON lines) here.")
@click.option("--snapshot-entries", type=click.IntRange(0), default=300, show_default=True,
              help="Nodes snapshot every N applied entries (small: exercises InstallSnapshot).")
@click.option("--tls", is_flag=True, help="Mutual TLS between the nodes, clients over TLS "
              "with a token (the secure path).")
@click.option("--lease-reads", is_flag=True, help="Nodes serve linearizable reads under "
              "leader leases (replica.lease_reads = 1) instead of a quorum round each.")
@click.option("--follower-reads", is_flag=True, help="Clients spread reads over every "
              "member (read_from=any): followers serve them with a read index.")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary line per run.")
@click.option("-v", "--verbose", is_flag=True, help="Print faults as they are injected.")
def chaos_command(seed: int | None, runs: int, duration_s: float, nodes: str, clients: int,
                  groups: int, kinds: str | None, data_dir: str | None,
                  history_path: str | None,
                  snapshot_entries: int, tls: bool, lease_reads: bool, follower_reads: bool,
                  as_json: bool,
                  verbose: bool) -> None:
    """Run recording clients against a local cluster while injecting faults; check the history.

    Exits non-zero on any anomaly. Replay a failing run with its --seed.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")
    if kinds is None:
        kinds = ",".join(FAULT_KINDS + SHARD_KINDS if groups > 1 else FAULT_KINDS)
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
    allowed = ALL_KINDS if groups > 1 else FAULT_KINDS + MEMBER_KINDS
    bad = [k for k in chosen if k not in allowed]
    if bad or not chosen:
        raise click.UsageError(f"unknown fault kinds {bad}; choose from {', '.join(allowed)}"
                               + ("" if groups > 1 else " (shard faults need --groups 2)"))
    first = seed if seed is not None else secrets.randbelow(2**31)
    failed = []
    for r in range(runs):
        s = first + r
        click.echo(f"chaos run seed={s} duration={duration_s}s nodes={nodes} groups={groups} "
                   f"faults={','.join(chosen)}{' tls' if tls else ''}"
                   f"{' lease-reads' if lease_reads else ''}"
                   f"{' follower-reads' if follower_reads else ''}", err=True)
        cfg = ChaosSettings(seed=s, nodes=int(nodes), duration_s=duration_s, clients=clients,
                            nemesis=NemesisSettings(kinds=chosen),
                            data_dir=Path(data_dir) / f"seed-{s}" if data_dir else None,
                            history_path=Path(history_path) if history_path else None,
                            snapshot_entries=snapshot_entries, groups=groups, tls=tls,
                            lease_reads=lease_reads, follower_reads=follower_reads)
        report = run_chaos(cfg)
        click.echo(report_json(report) if as_json else report.summary())
        if not report.ok:
            failed.append(s)
    if failed:
        click.echo(f"failing seeds: {failed}", err=True)
        sys.exit(1)
