"""The ``kvraft`` command line: serve, up, get/put/append/delete, status, bench, check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft import credentials, errors
from kvraft.cli_options import setting_option
from kvraft.config import (
    FLAGS,
    MEMBER,
    SERVE_SETTING,
    SERVE_SETTINGS,
    LocalClusterSettings,
    SettingError,
    settings_from,
    unknown_keys,
)
from kvraft.runtime.node import NodeConfig, run_node
from kvraft.transport import tls

DEFAULT_ADDRS = ",".join(LocalClusterSettings().addrs())
"""The nodes of ``kvraft up``'s default cluster."""

F = TypeVar("F", bound=Callable[..., Any])


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
        raise click.BadParameter(f"{text!r}: expected ID=HOST:PORT", param_hint="--peer")
    return int(node), addr.strip()


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.ClickException(f"cannot read config {path}: {e}") from None


def _file_value(file_cfg: Mapping[str, Any], key: str, ok: Callable[[Any], bool],
                expected: str, source: str) -> Any:
    value = file_cfg.get(key)
    if value is not None and not ok(value):
        raise click.ClickException(f"{source}: {key} must be {expected}, got {value!r}")
    return value


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_addr_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(a, str) for a in v))


def _is_peer_table(v: Any) -> bool:
    return isinstance(v, dict) and all(str(k).isdigit() and isinstance(a, str)
                                       for k, a in v.items())


def node_config_from(file_cfg: Mapping[str, Any], options: Mapping[str, Any], *,
                     source: str = "config file") -> NodeConfig:
    """The :class:`NodeConfig` of ``kvraft serve``.

    ``options`` are serve's parameters by TOML key (``None`` or ``()``: not given);
    ``file_cfg`` is the ``--config`` file. Each value comes from the command line (or
    its environment variable), else the file, else its default in :mod:`kvraft.config`.
    Bad values raise click errors that name the option or the file's key.
    """
    unknown = unknown_keys(file_cfg)
    if unknown:
        raise click.ClickException(f"{source}: unknown setting(s) {', '.join(unknown)} (keys "
                                   "are serve's options with '_' for '-'; peers, groups)")
    for key, value in file_cfg.items():
        if key in SERVE_SETTING:
            try:
                SERVE_SETTING[key].parse(value)
            except SettingError as e:
                raise click.ClickException(f"{source}: {e}") from None
    try:
        settings = settings_from(options, file_cfg)
    except SettingError as e:
        raise click.UsageError(str(e)) from None

    # Who the node is: checked in the file even where the command line overrides it.
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "id": (lambda v: _is_int(v, 1), "a positive integer"),
        "listen": (lambda v: isinstance(v, str), "a string"),
        "peers": (_is_peer_table, 'a table of ID = "HOST:PORT"'),
        "groups": (lambda v: isinstance(v, list) and all(_is_int(g, 0) for g in v),
                   "a list of non-negative integers"),
        "controller": (_is_addr_list, "a string or a list of strings"),
        "join": (lambda v: isinstance(v, str), "a string"),
        "data_dir": (lambda v: isinstance(v, str), "a string"),
        "secret": (lambda v: isinstance(v, str), "a string"),
        "secret_file": (lambda v: isinstance(v, str), "a string"),
        "tls_ca": (lambda v: isinstance(v, str), "a string"),
        "tls_cert": (lambda v: isinstance(v, str), "a string"),
        "tls_key": (lambda v: isinstance(v, str), "a string"),
        **{flag: (lambda v: isinstance(v, bool), "true or false") for flag in FLAGS},
    }
    from_file = {k: _file_value(file_cfg, k, ok, what, source)
                 for k, (ok, what) in checks.items()}

    def pick(key: str) -> Any:
        value = options.get(key)
        return from_file[key] if value is None or value == () else value

    peer_map = {int(k): v for k, v in (from_file["peers"] or {}).items()}
    for p in options.get("peers") or ():
        i, a = _parse_peer(p)
        peer_map[i] = a
    node_id, listen, data_dir = pick("id"), pick("listen"), pick("data_dir")
    if node_id is None or listen is None or data_dir is None:
        raise click.UsageError("--id, --listen and --data-dir are required")
    groups = pick("groups") or ()
    ctrl = pick("controller") or ""
    if isinstance(ctrl, list):
        ctrl = ",".join(ctrl)
    secret = read_secret(pick("secret_file"), from_file["secret"])
    insecure = bool(pick("insecure"))
    auth = pick("auth")
    tls_files = [pick(k) for k in ("tls_ca", "tls_cert", "tls_key")]
    if insecure and any(tls_files):
        raise click.UsageError("--insecure and --tls-* exclude each other")
    if not insecure and not all(tls_files):
        raise click.UsageError(
            "TLS is on by default: give --tls-ca, --tls-cert and --tls-key (make them with "
            "kvraft certs init / kvraft certs issue node), or --insecure for plain HTTP")
    try:
        return NodeConfig(node_id=node_id, listen=listen, peers=peer_map,
                          data_dir=Path(data_dir), secret=secret, groups=tuple(groups),
                          controller=tuple(a.strip() for a in ctrl.split(",") if a.strip()),
                          join=pick("join") or None, settings=settings,
                          tls=None if insecure else tls.from_paths(*tls_files),
                          auth=(not insecure) if auth is None else bool(auth),
                          fault_injection=bool(pick("enable_fault_injection")))
    except ValueError as e:  # TLSError too
        raise click.UsageError(str(e)) from None


def read_secret(path: str | None, from_config: str | None = None) -> str:
    """The cluster secret: ``path``'s contents (stripped), else ``KVRAFT_SECRET``, else
    the config file's ``secret``. Never taken from the command line (ps shows it)."""
    if path:
        return credentials.read_file(path, "secret")
    return os.environ.get("KVRAFT_SECRET") or from_config or ""


def _member_option(key: str, **kwargs: Any) -> Callable[[F], F]:
    m = MEMBER[key]
    if m.envvar:
        kwargs.update(envvar=m.envvar, show_envvar=True)
    return click.option(m.option, key, help=m.doc, **kwargs)


def _setting_options(f: F) -> F:
    for s in reversed(SERVE_SETTINGS):
        f = setting_option(s)(f)
    return f


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file with the same settings: keys are the options with '_' for "
              "'-' (peers, groups: plural); command-line options win.")
@_member_option("id", type=click.IntRange(1))
@_member_option("listen")
@_member_option("peers", multiple=True)
@_member_option("groups", multiple=True, type=click.IntRange(0))
@_member_option("controller")
@_member_option("join")
@_member_option("data_dir", type=click.Path(file_okay=False))
@_member_option("secret_file", type=click.Path(dir_okay=False))
@_member_option("tls_ca", type=click.Path(dir_okay=False))
@_member_option("tls_cert", type=click.Path(dir_okay=False))
@_member_option("tls_key", type=click.Path(dir_okay=False))
@click.option("--insecure", "insecure", is_flag=True, default=None, help=FLAGS["insecure"])
@click.option("--auth/--no-auth", "auth", default=None, help=FLAGS["auth"])
@click.option("--enable-fault-injection", "enable_fault_injection", is_flag=True,
              default=None, help=FLAGS["enable_fault_injection"])
@_setting_options
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: str | None, log_level: str, **options: Any) -> None:
    """Run one node in the foreground (SIGTERM or Ctrl-C stops it cleanly).

    Every setting not given keeps its default from kvraft.config (shown below).
    """
    cfg = node_config_from(_load_config(config_path), options,
                           source=config_path or "config file")
    start_node(cfg, log_level)


def start_node(cfg: NodeConfig, log_level: str) -> None:
    """Run the node of ``cfg`` until it stops, then exit with its status."""
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
    if cfg.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_tls, cfg)
    return await run_node(cfg, stop)


def reload_tls(cfg: NodeConfig) -> None:
    """SIGHUP: take the rotated certificate and key for new connections; the open
    ones (the group's streams) are not dropped. Unusable files keep the old ones."""
    assert cfg.tls is not None
    log = logging.getLogger("kvraft.node")
    try:
        cfg.tls.reload()
    except tls.TLSError as e:
        log.error("node %d: TLS reload refused, the old certificate stays: %s", cfg.node_id, e)
        return
    log.info("node %d: TLS certificate %s reloaded", cfg.node_id, cfg.tls.files.cert)


# --- client commands ---------------------------------------------------------------------

addr_option = click.option("--addr", "addrs", envvar="KVRAFT_ADDRS", default=DEFAULT_ADDRS,
                           show_default=True, help="Comma-separated node addresses "
                           "(or KVRAFT_ADDRS).")
timeout_option = click.option("--timeout", "timeout_s", type=float, default=5.0,
                              show_default=True, help="Deadline in seconds, retries included.")


def _client_call(addrs: str, timeout_s: float, creds: credentials.Credentials, method: str,
                 *args: str) -> Any:
    from kvraft.client import Client

    try:
        with Client(addrs, timeout_s=timeout_s, tls=creds.tls, token=creds.token) as c:
            return getattr(c, method)(*args)
    except errors.InvalidArgument as e:
        raise click.UsageError(str(e)) from None
    except errors.KvraftError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None


def client_options(f: F) -> F:
    """--addr, --timeout, --token-file (and --secret-file) of the client commands."""
    return addr_option(timeout_option(credentials.options(f)))


@main.command()
@client_options
@click.argument("key")
def get(addrs: str, timeout_s: float, creds: credentials.Credentials, key: str) -> None:
    """Print KEY's value (exit status 1 if absent). Linearizable."""
    value = _client_call(addrs, timeout_s, creds, "get", key)
    if value is None:
        click.echo(f"(absent) {key}", err=True)
        sys.exit(1)
    click.echo(value)


@main.command()
@client_options
@click.argument("key")
@click.argument("value")
def put(addrs: str, timeout_s: float, creds: credentials.Credentials, key: str,
        value: str) -> None:
    """Set KEY to VALUE."""
    _client_call(addrs, timeout_s, creds, "put", key, value)
    click.echo("OK")


@main.command()
@client_options
@click.argument("key")
@click.argument("value")
def append(addrs: str, timeout_s: float, creds: credentials.Credentials, key: str,
           value: str) -> None:
    """Append VALUE to KEY (creating it if absent)."""
    _client_call(addrs, timeout_s, creds, "append", key, value)
    click.echo("OK")


@main.command()
@client_options
@click.argument("key")
def delete(addrs: str, timeout_s: float, creds: credentials.Credentials, key: str) -> None:
    """Delete KEY."""
    existed = _client_call(addrs, timeout_s, creds, "delete", key)
    click.echo("deleted" if existed else "(absent)")


@main.command()
@addr_option
@credentials.options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status documents.")
def status(addrs: str, creds: credentials.Credentials, as_json: bool) -> None:
    """Show each node's role, term, commit and applied index, and who leads."""
    from kvraft.statusview import collect_status, render_status

    docs = asyncio.run(collect_status([a for a in addrs.split(",") if a], creds=creds))
    if as_json:
        click.echo(json.dumps(docs, indent=2))
    else:
        click.echo(render_status(docs))
    if not any(isinstance(d, dict) and "groups" in d for d in docs.values()):
        sys.exit(1)


def _register_subcommands() -> None:
    from kvraft.bench import bench
    from kvraft.certs import certs_cli
    from kvraft.chaos.command import chaos_command
    from kvraft.check.command import check_command
    from kvraft.local import up
    from kvraft.member_cli import member_command, transfer_leader_command
    from kvraft.nodeinit import node_init_command
    from kvraft.restore import backup_command, restore_command

    main.add_command(certs_cli, name="certs")
    main.add_command(up)
    main.add_command(bench)
    main.add_command(check_command, name="check")
    main.add_command(chaos_command, name="chaos")
    main.add_command(backup_command, name="backup")
    main.add_command(restore_command, name="restore")
    main.add_command(member_command, name="member")
    main.add_command(transfer_leader_command, name="transfer-leader")
    main.add_command(node_init_command, name="node-init")


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
