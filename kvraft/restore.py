"""Backups in S3: ``kvraft backup`` (now / list) and ``kvraft restore``.

``restore`` builds a node's data directory for one group from a snapshot in S3: the
latest one, or one chosen by index or by time. The object's size and sha256 are
verified against its manifest before use, and the database inside must be at the
manifest's index; a corrupt or mismatched object is refused with a clear message and
nothing is written to the data directory. Two uses:

- a replacement node for a live group, under a NEW id: restore its directory, start it
  with ``kvraft serve --join``, and add it with ``kvraft member add``; it catches up from
  the snapshot and the tail of the leader's log, then the lost member is removed.
  Restoring a current voter under its old id is refused: the restored node would have
  forgotten any vote its predecessor cast, and one term could get two leaders;
- a whole group lost (``--whole-group``): restore every member's directory from the
  same snapshot and start them; they elect a leader and serve the state as of that
  snapshot. No member of the old group may still be running.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import click

from kvraft import credentials
from kvraft.raft.types import ConfState, HardState, SnapshotMeta
from kvraft.storage.raftlog import RaftLogStore
from kvraft.storage.s3 import Manifest, S3SnapshotStore, SnapshotStoreError
from kvraft.storage.snapshots import SnapshotError, adopt_snapshot, install_state
from kvraft.transport.tls import context, url


class RestoreError(Exception):
    """The restore cannot proceed; the message says why."""


def _progress(label: str, enabled: bool) -> Callable[[int, int], None]:
    state = {"last": 0.0}

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if enabled and (now - state["last"] > 0.5 or done == total):
            state["last"] = now
            pct = 100.0 * done / total if total else 100.0
            click.echo(f"\r{label}: {done / 2**20:8.1f} / {total / 2**20:.1f} MiB ({pct:5.1f}%)",
                       err=True, nl=done == total)

    return cb


def restore_node(store: S3SnapshotStore, *, group: int, node_id: int, data_dir: Path,
                 index: int | None = None, at_or_before_unix: float | None = None,
                 force: bool = False, show_progress: bool = False,
                 whole_group: bool = False) -> Manifest:
    """Create ``data_dir``'s replica of ``group`` from S3; returns the manifest used."""
    try:
        manifest = store.select(group, index=index, at_or_before_unix=at_or_before_unix)
    except SnapshotStoreError as e:
        raise RestoreError(str(e)) from None
    membership = manifest.membership if isinstance(manifest.membership, dict) else {}
    voters = membership.get("voters", [])
    if whole_group and node_id not in voters:
        raise RestoreError(f"node {node_id} is not a member of group {group} in snapshot "
                           f"{manifest.index} (members: {voters}); --whole-group rebuilds "
                           "the snapshot's members")
    if not whole_group and node_id in voters:
        raise RestoreError(
            f"node {node_id} is a voter of group {group} in snapshot {manifest.index}: a "
            "restored node forgets the votes its predecessor cast, so it must not come back "
            "under the same id while the group lives. To replace a lost node, restore under "
            "a new id, start it with `kvraft serve --join HOST:PORT`, run `kvraft member add`, "
            f"then `kvraft member remove --id {node_id}`. To rebuild a group whose members "
            "are all lost, pass --whole-group for each of them")
    gdir = data_dir / f"group-{group}"
    if (gdir / "raft.db").exists() or (gdir / "state.db").exists():
        if not force:
            raise RestoreError(f"{gdir} already holds a replica; stop the node and pass --force "
                               "to replace it")
        shutil.rmtree(gdir)
    staging = data_dir / f".restore-group-{group}"
    shutil.rmtree(staging, ignore_errors=True)
    snaps = staging / "snapshots"
    snaps.mkdir(parents=True)
    try:
        download = snaps / "download.sqlite"
        store.download(manifest, str(download),
                       progress=_progress(f"downloading snapshot {manifest.index}", show_progress))
        addrs = membership.get("addresses", {})
        conf = ConfState(frozenset(int(v) for v in voters),
                         frozenset(int(v) for v in membership.get("learners", [])),
                         tuple(sorted((int(k), str(a)) for k, a in addrs.items()))
                         if isinstance(addrs, dict) else ())
        local = adopt_snapshot(download, snaps, index=manifest.index, term=manifest.term,
                               conf=conf, sha256=manifest.sha256, size=manifest.size)
        install_state(local, staging / "state.db")
        raft = RaftLogStore(staging / "raft.db", node_id=node_id, group_id=group)
        try:
            raft.save(HardState(manifest.term, 0), [])
            raft.compact(SnapshotMeta(manifest.index, manifest.term, conf),
                         (manifest.index, manifest.term), discard_log=True)
            if not whole_group:
                raft.mark_restored(manifest.index)
        finally:
            raft.close()
        os.replace(staging, gdir)
    except (SnapshotStoreError, SnapshotError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise RestoreError(str(e)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# --- CLI -----------------------------------------------------------------------------


def s3_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.option("--bucket", envvar="KVRAFT_S3_BUCKET", required=True, help="S3 bucket."),
        click.option("--prefix", envvar="KVRAFT_S3_PREFIX", default="kvraft", show_default=True),
        click.option("--cluster", envvar="KVRAFT_CLUSTER", default="default", show_default=True,
                     help="Cluster name in the object layout."),
        click.option("--endpoint-url", envvar="KVRAFT_S3_ENDPOINT_URL",
                     help="S3 endpoint (e.g. a MinIO or moto server)."),
        click.option("--region", envvar="AWS_REGION"),
    ]):
        f = opt(f)
    return f


def _store(bucket: str, prefix: str, cluster: str, endpoint_url: str | None,
           region: str | None) -> S3SnapshotStore:
    return S3SnapshotStore(bucket=bucket, prefix=prefix, cluster=cluster,
                           endpoint_url=endpoint_url, region=region, max_attempts=3)


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected ISO-8601 time or Unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


@click.command("restore")
@s3_options
@click.option("--group", "groups", type=int, multiple=True, default=(1,), show_default=True,
              help="Group to restore (repeat for several: a node of a sharded cluster hosts "
              "the controller, group 0, and its data groups).")
@click.option("--id", "node_id", type=int, required=True, help="The node id to restore for.")
@click.option("--data-dir", type=click.Path(file_okay=False), required=True)
@click.option("--index", type=int, help="Restore exactly this snapshot index.")
@click.option("--time", "at_time", help="Restore the newest snapshot taken at or before this "
              "time (ISO-8601 or Unix seconds).")
@click.option("--force", is_flag=True, help="Replace an existing replica directory.")
@click.option("--all-groups", is_flag=True, help="Restore every group stored in S3 (the "
              "controller and every data group) for this node.")
@click.option("--whole-group", is_flag=True, help="Rebuild a group whose members are all "
              "lost: restore this member of the snapshot under its own id (do it for each "
              "member). Without it, only a new id (not a voter in the snapshot) is restored, "
              "to join the live group with `serve --join` and `member add`.")
def restore_command(bucket: str, prefix: str, cluster: str, endpoint_url: str | None,
                    region: str | None, groups: tuple[int, ...], node_id: int, data_dir: str,
                    index: int | None, at_time: str | None, force: bool,
                    all_groups: bool, whole_group: bool) -> None:
    """Create a node's data directory for each GROUP from snapshots in S3."""
    if index is not None and at_time is not None:
        raise click.UsageError("--index and --time are exclusive")
    store = _store(bucket, prefix, cluster, endpoint_url, region)
    if all_groups:
        try:
            groups = tuple(store.list_groups())
        except SnapshotStoreError as e:
            raise click.ClickException(str(e)) from None
        if not groups:
            raise click.ClickException(f"no snapshots under s3://{bucket}/{prefix}/{cluster}/")
    if index is not None and len(groups) > 1:
        raise click.UsageError("--index names one snapshot: restore one group at a time")
    for group in groups:
        t0 = time.monotonic()
        try:
            m = restore_node(store, group=group, node_id=node_id, data_dir=Path(data_dir),
                             index=index,
                             at_or_before_unix=_parse_time(at_time) if at_time else None,
                             force=force, show_progress=True, whole_group=whole_group)
        except RestoreError as e:
            raise click.ClickException(f"restore of group {group} refused: {e}") from None
        click.echo(f"restored group {group} node {node_id} from snapshot {m.index} (term "
                   f"{m.term}, {m.size} bytes, sha256 {m.sha256[:16]}…, taken {m.created}) "
                   f"into {data_dir} in {time.monotonic() - t0:.1f}s")
        if not whole_group:
            click.echo(f"node {node_id} is not a member of group {group} yet: start it with "
                       "`kvraft serve --join HOST:PORT ...` and add it with `kvraft member add "
                       f"--group {group} --id {node_id} --address ...`")


@click.group("backup", invoke_without_command=True)
@click.option("--addr", "addrs", envvar="KVRAFT_ADDRS",
              default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003", show_default=True)
@credentials.options
@click.option("--group", "groups", type=int, multiple=True, default=(1,), show_default=True,
              help="Group to back up (repeat: --group 0 --group 1 ... for a whole cluster).")
@click.pass_context
def backup_command(ctx: click.Context, addrs: str, creds: credentials.Credentials,
                   groups: tuple[int, ...]) -> None:
    """Upload a snapshot of each GROUP to S3 now (its leader does it), or `backup list`."""
    if ctx.invoked_subcommand is not None:
        return
    if not creds.secret and not creds.token:
        raise click.UsageError("backups need an admin token (--token-file or KVRAFT_TOKEN) "
                               "or the cluster secret (--secret-file or KVRAFT_SECRET)")
    for group in groups:
        _backup_group(addrs, creds, group)


def _backup_group(addrs: str, creds: credentials.Credentials, group: int) -> None:
    errors = []
    for addr in [a.strip() for a in addrs.split(",") if a.strip()]:
        req = urllib.request.Request(url(creds.tls, addr, f"/v1/admin/backup?group={group}"),
                                     method="POST", headers=creds.headers())
        try:
            with urllib.request.urlopen(req, timeout=600, context=context(creds.tls)) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            errors.append(f"{addr}: {e.code} {e.read().decode(errors='replace').strip()}")
            continue
        except OSError as e:
            errors.append(f"{addr}: {e}")
            continue
        m = doc["manifest"]
        what = "uploaded" if doc["uploaded"] else "unchanged since the last upload"
        click.echo(f"group {group}: snapshot {m['index']} (term {m['term']}, {m['size']} bytes) "
                   f"{what}: s3://{doc['bucket']}/{m['object_key']}")
        return
    click.echo("backup failed:\n  " + "\n  ".join(errors), err=True)
    sys.exit(1)


@backup_command.command("list")
@s3_options
@click.option("--group", type=int, help="Only this group (default: every group).")
@click.option("--json", "as_json", is_flag=True)
def backup_list(bucket: str, prefix: str, cluster: str, endpoint_url: str | None,
                region: str | None, group: int | None, as_json: bool) -> None:
    """List the snapshots stored in S3."""
    store = _store(bucket, prefix, cluster, endpoint_url, region)
    try:
        groups = [group] if group is not None else store.list_groups()
        rows = [m for g in groups for m in store.list(g)]
    except SnapshotStoreError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in rows], indent=2))
        return
    if not rows:
        click.echo(f"no snapshots under s3://{bucket}/{prefix}/{cluster}/")
        return
    click.echo(f"{'GROUP':>5}  {'INDEX':>10}  {'TERM':>6}  {'SIZE':>12}  CREATED                    "
               "SHA256")
    for m in rows:
        click.echo(f"{m.group:>5}  {m.index:>10}  {m.term:>6}  {m.size:>12}  {m.created:<25}  "
                   f"{m.sha256[:16]}")
