"""``kvraft up``: a whole local cluster on 127.0.0.1, one OS process per node.

Every node hosts the shard controller (group 0) and the data groups 1..``--groups``
(multi-raft in one process per node). On first start the controller is given its first
configuration: the data groups joined and the key space split evenly between them.

The cluster's shape (ids, ports, secret, groups) is written to
``<data-dir>/cluster.json`` on first start; running ``up`` again on the same directory
restarts the same cluster with its data.

The cluster is secure by default: a cluster CA and one certificate per node under
``<data-dir>/certs`` (mutual TLS between nodes), tokens required, and an admin token in
``<data-dir>/admin.token`` (printed once). The CLIs run from the same directory find
all of it (``kvraft.credentials``). ``--insecure`` starts plain HTTP with no tokens.
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

from kvraft import certs as certs_mod
from kvraft import credentials
from kvraft.admin import ShardAdmin
from kvraft.bootstrap import BootstrapError, bootstrap, wait_groups_at
from kvraft.cli_options import setting_option
from kvraft.config import LocalClusterSettings, describe
from kvraft.errors import KvraftError
from kvraft.transport.tls import url

UP = LocalClusterSettings()
"""``kvraft up``'s defaults."""


def cluster_layout(data_dir: Path, nodes: int, base_port: int, host: str = UP.host,
                   groups: int = UP.groups, tls: bool = True) -> dict[str, Any]:
    """Load the cluster layout from ``data_dir`` or create it (with a fresh secret)."""
    path = data_dir / "cluster.json"
    if path.exists():
        layout: dict[str, Any] = json.loads(path.read_text())
        layout.setdefault("groups", [0, 1])
        layout.setdefault("tls", False)  # made before TLS: it stays as it was
        return layout
    data_dir.mkdir(parents=True, exist_ok=True)
    layout = {"secret": secrets.token_hex(16),
              "nodes": {str(i): f"{host}:{base_port + i - 1}" for i in range(1, nodes + 1)},
              "groups": list(range(groups + 1)), "tls": tls}
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
    if layout.get("tls"):
        certs = data_dir / "certs"
        argv += ["--tls-ca", str(certs / certs_mod.CA_CERT),
                 "--tls-cert", str(certs / f"node-{node_id}.crt"),
                 "--tls-key", str(certs / f"node-{node_id}.key")]
    else:
        argv.append("--insecure")
    return argv + (extra or [])


def ensure_certs(layout: dict[str, Any], data_dir: Path) -> None:
    """The cluster CA, a certificate per node (for its host), and the admin client's."""
    certs = data_dir / "certs"
    if not (certs / certs_mod.CA_CERT).exists():
        certs_mod.init_ca(certs, name="kvraft-local")
    for node_id, addr in layout["nodes"].items():
        if not (certs / f"node-{node_id}.crt").exists():
            host = addr.rpartition(":")[0]
            certs_mod.issue_node(certs, int(node_id), sorted({host, "127.0.0.1", "localhost"}))
    if not (certs / "client-admin.crt").exists():
        certs_mod.issue_client(certs, "admin")


def ensure_admin_token(addrs: list[str], creds: credentials.Credentials,
                       data_dir: Path) -> str | None:
    """The local cluster's admin token: made on first start, then kept in
    ``admin.token`` (0600). Returns it when it was just made (to print once)."""
    path = data_dir / credentials.ADMIN_TOKEN_FILE
    if path.exists():
        return None
    token = ShardAdmin(addrs, creds.secret, tls=creds.tls).token_create("admin", "admin")
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    path.with_suffix(".tmp").replace(path)
    return token


def _wait_for_leader(addrs: list[str], timeout_s: float, creds: credentials.Credentials
                     ) -> str | None:
    import asyncio

    from kvraft.statusview import collect_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docs = asyncio.run(collect_status(addrs, timeout_s=1.0, creds=creds))
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
@click.option("--insecure", is_flag=True, help="On first start: plain HTTP and no tokens "
              "(local experiments only). Default: TLS, certificates under DATA_DIR/certs, and "
              "an admin token in DATA_DIR/admin.token.")
def up(nodes: int, groups: int, base_port: int, data_dir: str, insecure: bool) -> None:
    """Start a local cluster on 127.0.0.1 and stay in the foreground until Ctrl-C."""
    root = Path(data_dir).resolve()
    layout = cluster_layout(root, nodes, base_port, groups=groups, tls=not insecure)
    if layout["tls"]:
        ensure_certs(layout, root)
    creds = credentials.load(env={"KVRAFT_DATA_DIR": str(root),
                                  "KVRAFT_SECRET": layout["secret"]})
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
    leader = _wait_for_leader(addrs, 15.0, creds)
    data_groups = [g for g in layout["groups"] if g != 0]
    members = {int(n): a for n, a in layout["nodes"].items()}
    token = None
    try:
        num = bootstrap(addrs, layout["secret"], {g: members for g in data_groups},
                        tls=creds.tls)
        wait_groups_at(addrs, data_groups, num, 30.0, secret=layout["secret"], tls=creds.tls)
        shards = f"configuration {num}: data groups {data_groups}"
        if layout["tls"]:
            token = ensure_admin_token(addrs, creds, root)
    except (BootstrapError, KvraftError) as e:
        shards = f"not ready yet ({e})"
    click.echo(f"kvraft cluster of {len(addrs)} nodes, data in {root}")
    click.echo(f"shards: {shards}; the controller is group 0")
    for n in sorted(layout["nodes"], key=int):
        click.echo(f"  node {n}: {url(creds.tls, layout['nodes'][n])}  "
                   f"(log: {root}/node-{n}.log)")
    click.echo(f"leader: {leader or 'not yet elected'}")
    if layout["tls"]:
        click.echo(f"TLS: CA and certificates in {root}/certs; tokens required")
        if token is not None:
            click.echo(f"admin token (kept in {root}/admin.token): {token}")
        else:
            click.echo(f"admin token: in {root}/admin.token")
    else:
        click.echo("INSECURE: plain HTTP, no tokens (started with --insecure)")
    click.echo(f"try:  kvraft put hello world --addr {','.join(addrs)}")
    if layout["tls"]:
        click.echo(f"      curl --cacert {root}/certs/ca.crt -H \"Authorization: Bearer "
                   f"$(cat {root}/admin.token)\" -L https://{addrs[0]}/v1/kv/hello")
    else:
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
