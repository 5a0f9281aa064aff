"""``kvraft up``: a whole local cluster on 127.0.0.1, one OS process per node.

Every node hosts the shard controller (group 0) and the data groups 1..``--groups``
(multi-raft in one process per node). On first start the controller is given its first
configuration: the data groups joined and the key space split evenly between them.

The cluster's shape (ids, ports, secret, groups) is written to
``<data-dir>/cluster.json`` on first start; running ``up`` again on the same directory
restarts the same cluster with its data.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from kvraft.bootstrap import BootstrapError, bootstrap, wait_groups_at
from kvraft.cli_options import setting_option
from kvraft.config import LocalClusterSettings, describe

UP = LocalClusterSettings()
"""``kvraft up``'s defaults."""


def cluster_layout(data_dir: Path, nodes: int, base_port: int, host: str = UP.host,
                   groups: int = UP.groups) -> dict[str, Any]:
    """Load the cluster layout from ``data_dir`` or create it (with a fresh secret)."""
    path = data_dir / "cluster.json"
    if path.exists():
        layout: dict[str, Any] = json.loads(path.read_text())
        layout.setdefault("groups", [0, 1])
        return layout
    data_dir.mkdir(parents=True, exist_ok=True)
    layout = {"secret": secrets.token_hex(16),
              "nodes": {str(i): f"{host}:{base_port + i - 1}" for i in range(1, nodes + 1)},
              "groups": list(range(groups + 1))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return layout


def serve_argv(layout: dict[str, Any], node_id: str, data_dir: Path,
               extra: list[str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "kvraft", "serve", "--id", node_id,
            "--listen", layout["nodes"][node_id], "--data-dir", str(data_dir / f"node-{node_id}")]
    for peer, addr in layout["nodes"].items():
        argv += ["--peer", f"{peer}={addr}"]
    for g in layout["groups"]:
        argv += ["--group", str(g)]
    return argv + (extra or [])


def _wait_for_leader(addrs: list[str], timeout_s: float) -> str | None:
    import asyncio

    from kvraft.statusview import collect_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docs = asyncio.run(collect_status(addrs, timeout_s=1.0))
        for addr, doc in docs.items():
            for g in doc.get("groups", {}).values():
                if g.get("role") == "leader":
                    return addr
        time.sleep(0.2)
    return None


@click.command()
@setting_option(describe(LocalClusterSettings, "nodes"), use_default=True)
@setting_option(describe(LocalClusterSettings, "groups"), use_default=True)
@setting_option(describe(LocalClusterSettings, "base_port"), use_default=True)
@setting_option(describe(LocalClusterSettings, "data_dir"), use_default=True,
                type=click.Path(file_okay=False))
def up(nodes: int, groups: int, base_port: int, data_dir: str) -> None:
    """Start a local cluster on 127.0.0.1 and stay in the foreground until Ctrl-C."""
    root = Path(data_dir).resolve()
    layout = cluster_layout(root, nodes, base_port, groups=groups)
    env = dict(os.environ, KVRAFT_SECRET=layout["secret"], PYTHONUNBUFFERED="1")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    for node_id in sorted(layout["nodes"], key=int):
        (root / f"node-{node_id}").mkdir(parents=True, exist_ok=True)
        logf = open(root / f"node-{node_id}.log", "ab")
        logs.append(logf)
        procs[node_id] = subprocess.Popen(serve_argv(layout, node_id, root), env=env,
                                          stdout=logf, stderr=subprocess.STDOUT)
    addrs = [layout["nodes"][n] for n in sorted(layout["nodes"], key=int)]
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    leader = _wait_for_leader(addrs, 15.0)
    data_groups = [g for g in layout["groups"] if g != 0]
    members = {int(n): a for n, a in layout["nodes"].items()}
    try:
        num = bootstrap(addrs, layout["secret"], {g: members for g in data_groups})
        wait_groups_at(addrs, data_groups, num, 30.0)
        shards = f"configuration {num}: data groups {data_groups}"
    except BootstrapError as e:
        shards = f"not ready yet ({e})"
    click.echo(f"kvraft cluster of {len(addrs)} nodes, data in {root}")
    click.echo(f"shards: {shards}; the controller is group 0")
    for n in sorted(layout["nodes"], key=int):
        click.echo(f"  node {n}: http://{layout['nodes'][n]}  (log: {root}/node-{n}.log)")
    click.echo(f"leader: {leader or 'not yet elected'}")
    click.echo(f"try:  kvraft put hello world --addr {','.join(addrs)}")
    click.echo(f"      curl -L http://{addrs[0]}/v1/kv/hello")
    click.echo("      shardctl show")
    click.echo("Ctrl-C stops the cluster.")
    reported: set[str] = set()
    while not stopping:
        for n, p in procs.items():
            if p.poll() is not None and n not in reported:
                reported.add(n)
                click.echo(f"node {n} exited with status {p.returncode}; see {root}/node-{n}.log",
                           err=True)
        time.sleep(0.2)
    click.echo("stopping nodes...")
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in logs:
        f.close()
    click.echo("stopped.")
