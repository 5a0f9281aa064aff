"""``kvraft node-init``: what a cloud node fetches before ``kvraft serve`` starts.

The cluster's secrets live in SSM Parameter Store (Terraform puts them there), never in
user data or on the AMI. Before each start, the node's systemd unit runs::

    kvraft node-init --ssm-prefix /kvraft/prod --id 11 --host 10.0.1.21 --out /run/kvraft

which reads, with the instance role, the SecureString parameters

- ``<prefix>/secret``: the cluster secret (peers present it with their certificate);
- ``<prefix>/tls/ca.crt`` and ``<prefix>/tls/ca.key``: the cluster CA,

and writes ``secret``, ``ca.crt``, ``node-<id>.crt`` and ``node-<id>.key`` (0600) into
``--out``, a directory of the service's own (systemd's ``RuntimeDirectory``: tmpfs, gone
at stop). The node's certificate is issued here for its own id and addresses. The CA key
is held in memory only while signing and is never written. Each start issues a fresh
certificate, so a restart also rotates it.

boto3 finds the region and the endpoint the usual way (``AWS_REGION``,
``AWS_ENDPOINT_URL_SSM`` / ``AWS_ENDPOINT_URL``), or from ``--region`` and
``--endpoint-url``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from kvraft import certs

__all__ = ["PARAMETERS", "fetch", "node_init"]

PARAMETERS = ("secret", "tls/ca.crt", "tls/ca.key")
_PREFIX = re.compile(r"/[A-Za-z0-9_./-]{1,900}")


def fetch(prefix: str, *, region: str | None = None, endpoint_url: str | None = None
          ) -> dict[str, str]:
    """The cluster's parameters under ``prefix``, decrypted (``PARAMETERS`` as keys)."""
    import boto3

    if not _PREFIX.fullmatch(prefix) or prefix.endswith("/") or "//" in prefix:
        raise ValueError(f"not an SSM parameter prefix: {prefix!r} (like /kvraft/prod)")
    ssm: Any = boto3.client("ssm", region_name=region, endpoint_url=endpoint_url)
    names = {f"{prefix}/{p}": p for p in PARAMETERS}
    doc = ssm.get_parameters(Names=sorted(names), WithDecryption=True)
    missing = sorted(doc.get("InvalidParameters", []))
    if missing:
        raise LookupError(f"SSM parameters not found: {', '.join(missing)}")
    return {names[p["Name"]]: p["Value"] for p in doc["Parameters"]}


def node_init(out: Path, node_id: int, hosts: list[str], params: dict[str, str]) -> list[Path]:
    """Write the node's secret, the CA certificate and a node certificate into ``out``."""
    secret = params["secret"].strip()
    if len(secret) < 16:
        raise ValueError("the cluster secret in SSM is shorter than 16 characters")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(dir=out, prefix=".ca-"))  # 0700, removed below
    try:
        (work / certs.CA_CERT).write_text(params["tls/ca.crt"])
        key = work / certs.CA_KEY
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(params["tls/ca.key"])
        crt, node_key = certs.issue_node(work, node_id, hosts, force=True)
        written = []
        for src, name, mode in ((crt, crt.name, 0o600), (node_key, node_key.name, 0o600),
                                (work / certs.CA_CERT, certs.CA_CERT, 0o600)):
            dst = out / name
            shutil.copyfile(src, dst)
            os.chmod(dst, mode)
            written.append(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the CA key goes with it
    secret_path = out / "secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return [*written, secret_path]


@click.command("node-init")
@click.option("--ssm-prefix", required=True, help="Where the cluster's parameters are, "
              "like /kvraft/prod.")
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True,
              help="This node's id (its certificate is CN=node-<id>).")
@click.option("--host", "hosts", multiple=True, required=True,
              help="An address the node is reached at (its certificate's SANs); repeat.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write into (systemd's RuntimeDirectory).")
@click.option("--region", default=None, help="AWS region (default: boto3's).")
@click.option("--endpoint-url", default=None, help="SSM endpoint (default: boto3's).")
def node_init_command(ssm_prefix: str, node_id: int, hosts: tuple[str, ...], out: Path,
                      region: str | None, endpoint_url: str | None) -> None:
    """Fetch the cluster secret and CA from SSM and issue this node's certificate."""
    try:
        params = fetch(ssm_prefix, region=region, endpoint_url=endpoint_url)
        paths = node_init(out, node_id, list(hosts), params)
    except Exception as exc:  # boto3's errors, a bad CA, an unwritable directory
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    for p in paths:
        click.echo(f"wrote {p}")
