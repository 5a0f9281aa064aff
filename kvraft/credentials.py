"""What the command-line tools present to a cluster: TLS, a token, the cluster secret.

Each comes from a file named on the command line, else the environment, else the local
cluster that ``kvraft up`` keeps in ``./kvraft-data`` (``KVRAFT_DATA_DIR``). None of
them is ever taken from the command line itself, where ``ps`` would show it:

- the cluster secret: ``--secret-file``, ``KVRAFT_SECRET``, else ``cluster.json`` when
  no token was found either (so a local secret never goes along to another cluster);
- a client token: ``--token-file``, ``KVRAFT_TOKEN``, ``admin.token`` (unless a secret
  was given);
- TLS: ``KVRAFT_TLS_CA`` (and ``KVRAFT_TLS_CERT``/``KVRAFT_TLS_KEY``), ``certs/``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft.transport import tls as tlsmod
from kvraft.transport.auth import SECRET_HEADER

F = TypeVar("F", bound=Callable[..., Any])

ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True, slots=True)
class Credentials:
    secret: str | None = None
    token: str | None = None
    tls: tlsmod.TLS | None = None

    def headers(self, *, secret: bool = True) -> dict[str, str]:
        h = {}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if secret and self.secret:
            h[SECRET_HEADER] = self.secret
        return h


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The local cluster's directory: ``KVRAFT_DATA_DIR``, else the directory of
    ``KVRAFT_CLUSTER_FILE``, else ``./kvraft-data``."""
    env = os.environ if env is None else env
    if env.get("KVRAFT_DATA_DIR"):
        return Path(env["KVRAFT_DATA_DIR"])
    if env.get("KVRAFT_CLUSTER_FILE"):
        return Path(env["KVRAFT_CLUSTER_FILE"]).parent
    return Path("kvraft-data")


def read_file(path: str | Path, what: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise click.UsageError(f"cannot read the {what} file {path}: {e}") from None
    if not value:
        raise click.UsageError(f"the {what} file {path} is empty")
    return value


def load(secret_file: str | None = None, token_file: str | None = None,
         env: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if env is None else env
    root = data_dir(env)
    secret = read_file(secret_file, "secret") if secret_file else env.get("KVRAFT_SECRET")
    token = read_file(token_file, "token") if token_file else env.get("KVRAFT_TOKEN")
    if not token and not secret and (root / ADMIN_TOKEN_FILE).exists():
        token = read_file(root / ADMIN_TOKEN_FILE, "token")
    if not secret and not token:  # the local cluster's secret, only if nothing was given
        try:
            doc = json.loads((root / "cluster.json").read_text())
        except (OSError, ValueError):
            doc = {}
        secret = doc.get("secret") if isinstance(doc, dict) else None
    certs = root / "certs"
    try:
        if env.get(tlsmod.ENV_CA):
            tls = tlsmod.from_paths(env[tlsmod.ENV_CA], env.get(tlsmod.ENV_CERT),
                                    env.get(tlsmod.ENV_KEY))
        elif (certs / "ca.crt").exists():
            admin = (certs / "client-admin.crt").exists()
            tls = tlsmod.from_paths(certs / "ca.crt", certs / "client-admin.crt" if admin
                                    else None, certs / "client-admin.key" if admin else None)
        else:
            tls = None
    except tlsmod.TLSError as e:
        raise click.UsageError(str(e)) from None
    return Credentials(secret if isinstance(secret, str) and secret else None,
                       token or None, tls)


def options(f: F) -> F:
    """``--secret-file`` and ``--token-file``; the command gets ``creds`` (:func:`load`)."""
    @functools.wraps(f)
    def command(*args: Any, secret_file: str | None, token_file: str | None,
                **kwargs: Any) -> Any:
        return f(*args, creds=load(secret_file, token_file), **kwargs)

    g = click.option("--token-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding a client token (default: KVRAFT_TOKEN, or the local "
                     "cluster's kvraft-data/admin.token).")(command)
    g = click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the cluster secret (default: KVRAFT_SECRET, or "
                     "kvraft-data/cluster.json).")(g)
    return g  # type: ignore[return-value]
