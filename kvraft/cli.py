"""The ``kvraft`` command line: serve, up, get/put/append/delete, status, bench, check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from kvraft import errors
from kvraft.runtime.backup import BackupSettings
from kvraft.runtime.node import NodeConfig, run_node
from kvraft.runtime.replica import ReplicaSettings
from kvraft.runtime.snapshotter import SnapshotSettings
from kvraft.transport.http_api import Limits

DEFAULT_ADDRS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"


def install_fast_loop() -> None:
    """Use uvloop when it is installed (a dependency on Linux and macOS).

    ``KVRAFT_EVENT_LOOP=asyncio`` keeps the standard loop (for comparisons and debugging).
    """
    if os.environ.get("KVRAFT_EVENT_LOOP", "uvloop") == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvraft")
def main() -> None:
    """kvraft: a strongly consistent, fault-tolerant key-value store."""


# --- serve -----------------------------------------------------------------------------


def _parse_peer(text: str) -> tuple[int, str]:
    node, sep, addr = text.partition("=")
    if not sep or not node.strip().isdigit():
        raise click.BadParameter(f"{text!r}: expected ID=HOST:PORT")
    return int(node), addr.strip()


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.ClickException(f"cannot read config {path}: {e}") from None


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file with the same settings (command-line options win).")
@click.option("--id", "node_id", type=int, help="This node's id (a positive integer).")
@click.option("--listen", help="HOST:PORT to serve clients and peers on.")
@click.option("--peer", "peers", multiple=True, help="ID=HOST:PORT of a group member (repeat).")
@click.option("--group", "groups", multiple=True, type=click.IntRange(0),
              help="A group this node is a bootstrap member of, with its peers (repeat); "
              "0 is the shard controller.")
@click.option("--controller", help="HOST:PORT,... of the controller's members (needed when "
              "this node does not host group 0).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where raft.db/state.db live.")
@click.option("--secret", envvar="KVRAFT_SECRET", help="Cluster secret (or KVRAFT_SECRET).")
@click.option("--tick-ms", type=int, help="Raft tick interval [50].")
@click.option("--election-ticks", type=int, help="Election timeout in ticks [10].")
@click.option("--heartbeat-ticks", type=int, help="Heartbeat interval in ticks [2].")
@click.option("--max-key-bytes", type=int, help="Largest key accepted [4096].")
@click.option("--max-value-bytes", type=int, help="Largest value accepted [1048576].")
@click.option("--snapshot-entries", type=int,
              help="Snapshot after this many applied entries; 0 disables [10000].")
@click.option("--snapshot-catchup-entries", type=int,
              help="Log entries kept below a snapshot for lagging followers [1000].")
@click.option("--s3-bucket", envvar="KVRAFT_S3_BUCKET", help="Enable S3 backups to this bucket.")
@click.option("--s3-prefix", envvar="KVRAFT_S3_PREFIX", help="Key prefix in the bucket [kvraft].")
@click.option("--s3-endpoint-url", envvar="KVRAFT_S3_ENDPOINT_URL",
              help="S3 endpoint (MinIO, moto); default AWS.")
@click.option("--s3-region", envvar="AWS_REGION", help="S3 region.")
@click.option("--cluster-name", envvar="KVRAFT_CLUSTER", help="Cluster name in S3 [default].")
@click.option("--backup-interval-s", type=float, help="Seconds between uploads [300].")
@click.option("--backup-keep", type=int, help="Snapshots kept in S3 per group [5].")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: str | None, node_id: int | None, listen: str | None,
          peers: tuple[str, ...], groups: tuple[int, ...], controller: str | None,
          data_dir: str | None, secret: str | None,
          tick_ms: int | None, election_ticks: int | None, heartbeat_ticks: int | None,
          max_key_bytes: int | None, max_value_bytes: int | None,
          snapshot_entries: int | None, snapshot_catchup_entries: int | None,
          s3_bucket: str | None, s3_prefix: str | None, s3_endpoint_url: str | None,
          s3_region: str | None, cluster_name: str | None, backup_interval_s: float | None,
          backup_keep: int | None, log_level: str) -> None:
    """Run one node in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    file_cfg = _load_config(config_path)

    def pick(name: str, value: Any, default: Any = None) -> Any:
        return value if value is not None else file_cfg.get(name, default)

    peer_map: dict[int, str] = {}
    for k, v in (file_cfg.get("peers") or {}).items():
        peer_map[int(k)] = str(v)
    for p in peers:
        i, a = _parse_peer(p)
        peer_map[i] = a
    node_id = pick("id", node_id)
    listen = pick("listen", listen)
    data_dir = pick("data_dir", data_dir)
    if node_id is None or listen is None or data_dir is None:
        raise click.UsageError("--id, --listen and --data-dir are required")
    snaps = SnapshotSettings(
        entries=pick("snapshot_entries", snapshot_entries, 10_000),
        catchup_entries=pick("snapshot_catchup_entries", snapshot_catchup_entries, 1_000))
    rs = ReplicaSettings(tick_ms=pick("tick_ms", tick_ms, 50),
                         election_ticks=pick("election_ticks", election_ticks, 10),
                         heartbeat_ticks=pick("heartbeat_ticks", heartbeat_ticks, 2),
                         snapshot=snaps)
    backup = BackupSettings(
        bucket=pick("s3_bucket", s3_bucket, "") or "",
        prefix=pick("s3_prefix", s3_prefix, "kvraft"),
        cluster=pick("cluster_name", cluster_name, "default"),
        endpoint_url=pick("s3_endpoint_url", s3_endpoint_url),
        region=pick("s3_region", s3_region),
        interval_s=float(pick("backup_interval_s", backup_interval_s, 300.0)),
        keep=pick("backup_keep", backup_keep, 5))
    limits = Limits(max_key_bytes=pick("max_key_bytes", max_key_bytes, 4096),
                    max_value_bytes=pick("max_value_bytes", max_value_bytes, 1 << 20))
    group_list = list(groups) or [int(g) for g in file_cfg.get("groups", [])]
    ctrl = pick("controller", controller) or ""
    if isinstance(ctrl, list):
        ctrl = ",".join(str(a) for a in ctrl)
    try:
        cfg = NodeConfig(node_id=int(node_id), listen=str(listen), peers=peer_map,
                         data_dir=Path(data_dir), secret=pick("secret", secret, "") or "",
                         groups=tuple(group_list),
                         controller=tuple(a.strip() for a in ctrl.split(",") if a.strip()),
                         replica=rs, limits=limits, backup=backup)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s node{cfg.node_id} %(levelname)s %(name)s: %(message)s")
    install_fast_loop()
    try:
        code = asyncio.run(_serve(cfg))
    except (errors.KvraftError, OSError) as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


async def _serve(cfg: NodeConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_node(cfg, stop)


# --- client commands ---------------------------------------------------------------------

addr_option = click.option("--addr", "addrs", envvar="KVRAFT_ADDRS", default=DEFAULT_ADDRS,
                           show_default=True, help="Comma-separated node addresses "
                           "(or KVRAFT_ADDRS).")
timeout_option = click.option("--timeout", "timeout_s", type=float, default=5.0,
                              show_default=True, help="Deadline in seconds, retries included.")


def _client_call(addrs: str, timeout_s: float, method: str, *args: str) -> Any:
    from kvraft.client import Client

    try:
        with Client(addrs, timeout_s=timeout_s) as c:
            return getattr(c, method)(*args)
    except errors.InvalidArgument as e:
        raise click.UsageError(str(e)) from None
    except errors.KvraftError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None


@main.command()
@addr_option
@timeout_option
@click.argument("key")
def get(addrs: str, timeout_s: float, key: str) -> None:
    """Print KEY's value (exit status 1 if absent). Linearizable."""
    value = _client_call(addrs, timeout_s, "get", key)
    if value is None:
        click.echo(f"(absent) {key}", err=True)
        sys.exit(1)
    click.echo(value)


@main.command()
@addr_option
@timeout_option
@click.argument("key")
@click.argument("value")
def put(addrs: str, timeout_s: float, key: str, value: str) -> None:
    """Set KEY to VALUE."""
    _client_call(addrs, timeout_s, "put", key, value)
    click.echo("OK")


@main.command()
@addr_option
@timeout_option
@click.argument("key")
@click.argument("value")
def append(addrs: str, timeout_s: float, key: str, value: str) -> None:
    """Append VALUE to KEY (creating it if absent)."""
    _client_call(addrs, timeout_s, "append", key, value)
    click.echo("OK")


@main.command()
@addr_option
@timeout_option
@click.argument("key")
def delete(addrs: str, timeout_s: float, key: str) -> None:
    """Delete KEY."""
    existed = _client_call(addrs, timeout_s, "delete", key)
    click.echo("deleted" if existed else "(absent)")


@main.command()
@addr_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status documents.")
def status(addrs: str, as_json: bool) -> None:
    """Show each node's role, term, commit and applied index, and who leads."""
    from kvraft.statusview import collect_status, render_status

    docs = asyncio.run(collect_status([a for a in addrs.split(",") if a]))
    if as_json:
        click.echo(json.dumps(docs, indent=2))
    else:
        click.echo(render_status(docs))
    if not any(isinstance(d, dict) and "groups" in d for d in docs.values()):
        sys.exit(1)


def _register_subcommands() -> None:
    from kvraft.bench import bench
    from kvraft.chaos.command import chaos_command
    from kvraft.check.command import check_command
    from kvraft.local import up
    from kvraft.restore import backup_command, restore_command

    main.add_command(up)
    main.add_command(bench)
    main.add_command(check_command, name="check")
    main.add_command(chaos_command, name="chaos")
    main.add_command(backup_command, name="backup")
    main.add_command(restore_command, name="restore")


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
