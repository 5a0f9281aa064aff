"""``shardctl``: show and change which key ranges live on which groups.

The controller is found with ``--controller HOST:PORT,...`` (or ``KVRAFT_CONTROLLER``);
without it, the cluster started by ``kvraft up`` in the current directory
(``./kvraft-data/cluster.json``: its node addresses and its secret). Changing commands
need the cluster secret (``--secret`` or ``KVRAFT_SECRET``) and wait until the migration
they started has finished (``--no-wait`` returns at once). Every command takes
``--json`` for machine-readable output.

Exit status: 0 on success, 1 when the controller refused or could not be reached,
3 when waiting timed out; the reason is one line on stderr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft import credentials
from kvraft.admin import (
    AdminError,
    ShardAdmin,
    WaitTimeout,
    describe_in_flight,
    parse_addrs,
)
from kvraft.errors import KvraftError

DEFAULT_CLUSTER_FILE = Path("kvraft-data") / "cluster.json"
EXIT_TIMEOUT = 3

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A one-line failure (newlines folded)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()) or "failed")


class TimedOut(Failure):
    exit_code = EXIT_TIMEOUT


def _cluster_file() -> dict[str, Any] | None:
    path = Path(os.environ.get("KVRAFT_CLUSTER_FILE", str(DEFAULT_CLUSTER_FILE)))
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class State:
    def __init__(self, controller: str | None, creds: credentials.Credentials, as_json: bool,
                 request_timeout: float) -> None:
        self._controller = controller
        self.creds = creds
        self.as_json = as_json
        self.request_timeout = request_timeout
        self._admin: ShardAdmin | None = None

    @property
    def admin(self) -> ShardAdmin:
        if self._admin is None:
            controller = self._controller
            if controller is None:
                layout = _cluster_file()
                if layout is not None and 0 in layout.get("groups", [0]):
                    nodes = layout.get("nodes", {})
                    controller = ",".join(nodes[n] for n in sorted(nodes, key=int))
            if not controller:
                raise Failure("no controller: pass --controller HOST:PORT,... (or set "
                              f"KVRAFT_CONTROLLER), or run `kvraft up` here "
                              f"({DEFAULT_CLUSTER_FILE} not found)")
            try:
                c = self.creds
                self._admin = ShardAdmin(parse_addrs(controller), c.secret,
                                         timeout_s=self.request_timeout, tls=c.tls,
                                         token=c.token)
            except AdminError as e:
                raise Failure(str(e)) from None
        return self._admin


def _fail(e: BaseException) -> Failure:
    if isinstance(e, WaitTimeout):
        return TimedOut(f"timeout: {e}")
    return Failure(str(e) or type(e).__name__)


def command(fn: F) -> F:
    """Add ``--json`` and turn kvraft errors into one-line failures."""
    def wrapper(ctx: click.Context, /, as_json: bool, **kwargs: Any) -> Any:
        st = ctx.find_object(State)
        if st is None:
            raise Failure("internal: no CLI state")
        st.as_json = st.as_json or as_json
        try:
            return fn(st, **kwargs)
        except click.ClickException:
            raise
        except (KvraftError, TimeoutError) as e:
            raise _fail(e) from None
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    decorated = click.option("--json", "as_json", is_flag=True,
                             help="Print JSON instead of tables.")(click.pass_context(wrapper))
    return decorated  # type: ignore[return-value]


def waiting(fn: F) -> F:
    """Add ``--no-wait`` and ``--timeout`` to a changing command."""
    fn = click.option("--timeout", type=click.FloatRange(0), default=120.0, show_default=True,
                      help="Seconds to wait for the migration to finish.")(fn)
    fn = click.option("--no-wait", is_flag=True,
                      help="Return once the controller accepted the change.")(fn)
    return fn


# --- output --------------------------------------------------------------------------------


def _key(k: str | None, *, end: bool = False) -> str:
    if k is None:
        return "+inf" if end else "null"
    return json.dumps(k, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _emit(st: State, doc: dict[str, Any], human: Callable[[], str]) -> None:
    if st.as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(human())


def _in_flight_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "migrations in flight: none"
    return "migrations in flight:\n" + "\n".join(
        "  " + describe_in_flight([it]) for it in items)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- the commands --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--controller", envvar="KVRAFT_CONTROLLER", metavar="HOST:PORT,...",
              help="Controller addresses (default: the `kvraft up` cluster in "
                   "./kvraft-data).")
@click.option("--request-timeout", type=click.FloatRange(0.1), default=10.0,
              show_default=True, help="Seconds per HTTP request.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (also per command).")
@click.pass_context
@credentials.options
def main(ctx: click.Context, controller: str | None, creds: credentials.Credentials,
         request_timeout: float, as_json: bool) -> None:
    """Show and change the shard configuration of a kvraft cluster."""
    ctx.obj = State(controller, creds, as_json, request_timeout)


@main.command()
@command
def show(st: State) -> None:
    """The configuration: ranges, groups and migrations in flight."""
    doc = st.admin.overview()

    def human() -> str:
        out = [f"configuration {doc['num']}", ""]
        out.append(table(["RANGE", "START", "END", "GROUP", "VERSION", "STATE"],
                         [[r["id"], _key(r["start"]), _key(r["end"], end=True), r["group"],
                           r["version"], r["state"]] for r in doc["ranges"]]))
        out.append("")
        rows = []
        for g in doc["groups"]:
            members = ",".join(f"{n}={a}" for n, a in
                               sorted(g["members"].items(), key=lambda kv: int(kv[0])))
            leader = (f"{g['leader_id']}={g['leader']}" if g["leader"]
                      else f"none ({g.get('error', 'unknown')})")
            rows.append([g["gid"], members, leader, g["ranges"], g["keys"], _size(g["bytes"]),
                         g["config"]])
        out.append(table(["GROUP", "MEMBERS", "LEADER", "RANGES", "KEYS", "BYTES", "CONFIG"],
                         rows))
        out.append("")
        out.append(_in_flight_text(doc["in_flight"]))
        return "\n".join(out)

    _emit(st, doc, human)


def _change(st: State, doc: dict[str, Any], what: str, no_wait: bool, timeout: float) -> None:
    res = st.admin.command(doc)
    num = int(res["num"])
    out: dict[str, Any] = {"ok": True, "num": num, "changed": bool(res.get("changed")),
                           "waited": False}
    if not st.as_json:
        note = "" if out["changed"] else " (nothing to change)"
        click.echo(f"{what}: configuration {num}{note}")
    if not no_wait:
        if not st.as_json:
            click.echo("waiting for migrations to finish...", err=True)
        st.admin.wait(timeout, num=num)
        out["waited"] = True
        if not st.as_json:
            click.echo("done: nothing in flight")
    if st.as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))


def _parse_member(admin: ShardAdmin, spec: str) -> tuple[int, str]:
    ident, sep, addr = spec.partition("=")
    if sep:
        if not ident.isdigit() or int(ident) < 1:
            raise Failure(f"bad member {spec!r}: expected ID=HOST:PORT with ID >= 1")
        return int(ident), parse_addrs(addr)[0]
    addr = parse_addrs(spec)[0]
    node = admin.status(addr).get("node")
    if not isinstance(node, int):
        raise Failure(f"{addr} did not say its node id; give it as ID={addr}")
    return node, addr


@main.command()
@click.argument("gid", type=click.IntRange(1))
@click.argument("members", nargs=-1, required=True, metavar="[ID=]HOST:PORT...")
@waiting
@command
def join(st: State, gid: int, members: tuple[str, ...], no_wait: bool,
         timeout: float) -> None:
    """Add group GID with these members (or replace its members).

    A member is ID=HOST:PORT, or HOST:PORT to ask that node for its id."""
    ms: dict[str, str] = {}
    for spec in members:
        nid, addr = _parse_member(st.admin, spec)
        ms[str(nid)] = addr
    _change(st, {"op": "join", "gid": gid, "members": ms}, f"joined group {gid}", no_wait,
            timeout)


@main.command()
@click.argument("gid", type=click.IntRange(1))
@waiting
@command
def leave(st: State, gid: int, no_wait: bool, timeout: float) -> None:
    """Remove group GID; its ranges move to the other groups."""
    _change(st, {"op": "leave", "gid": gid}, f"group {gid} left", no_wait, timeout)


@main.command()
@click.option("--key", help="Move the range holding this key.")
@click.option("--range", "range_id", type=click.IntRange(1), help="Move this range id.")
@click.option("--to", "to", type=click.IntRange(1), required=True, help="The new group.")
@waiting
@command
def move(st: State, key: str | None, range_id: int | None, to: int, no_wait: bool,
         timeout: float) -> None:
    """Move one range (--key or --range) to group --to."""
    if (key is None) == (range_id is None):
        raise Failure("give exactly one of --key and --range")
    doc: dict[str, Any] = {"op": "move", "to": to}
    if key is not None:
        doc["key"] = key
        what = f"moved the range holding {_key(key)} to group {to}"
    else:
        doc["range"] = range_id
        what = f"moved range {range_id} to group {to}"
    _change(st, doc, what, no_wait, timeout)


@main.command()
@click.option("--at", "at", required=True, help="The first key of the new right range.")
@waiting
@command
def split(st: State, at: str, no_wait: bool, timeout: float) -> None:
    """Split the range holding --at at that key (metadata only)."""
    _change(st, {"op": "split", "key": at}, f"split at {_key(at)}", no_wait, timeout)


@main.command()
@click.option("--at", "at", required=True, help="The start key of the range to merge.")
@waiting
@command
def merge(st: State, at: str, no_wait: bool, timeout: float) -> None:
    """Merge the range starting at --at into its left neighbour (same group)."""
    _change(st, {"op": "merge", "key": at}, f"merged at {_key(at)}", no_wait, timeout)


@main.command()
@click.option("--apply", "apply", is_flag=True, help="Apply the plan (default: only show it).")
@waiting
@command
def rebalance(st: State, apply: bool, no_wait: bool, timeout: float) -> None:
    """Show the moves that would balance the ranges over the groups; --apply them."""
    res = st.admin.plan(apply)
    p = res.get("plan", {})
    moves = p.get("moves", [])
    out: dict[str, Any] = {"plan": p, "applied": bool(res.get("applied")),
                           "num": int(res["num"]), "dropped": res.get("dropped", 0),
                           "waited": False}
    if not st.as_json:
        click.echo(f"plan from configuration {p.get('num')}: {len(moves)} move(s)")
        if moves:
            click.echo(table(["RANGE", "START", "END", "FROM", "TO", "KEYS", "BYTES"],
                             [[m["range_id"], _key(m["start"]), _key(m["end"], end=True),
                               m["from_gid"], m["to_gid"], m["keys"], _size(m["bytes"])]
                              for m in moves]))
        click.echo(f"total: {len(moves)} move(s), {p.get('keys', 0)} keys, "
                   f"{_size(p.get('bytes', 0))}, estimated {p.get('est_seconds', 0.0):.1f}s")
        if not apply:
            click.echo("nothing changed (use --apply to apply)")
        elif out["applied"]:
            dropped = f", {out['dropped']} stale move(s) dropped" if out["dropped"] else ""
            click.echo(f"applied: configuration {out['num']}{dropped}")
        else:
            click.echo("nothing to apply: already balanced")
    if apply and out["applied"] and not no_wait:
        if not st.as_json:
            click.echo("waiting for migrations to finish...", err=True)
        st.admin.wait(timeout, num=out["num"])
        out["waited"] = True
        if not st.as_json:
            click.echo("done: nothing in flight")
    if st.as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))


@main.command()
@click.option("--timeout", type=click.FloatRange(0), default=120.0, show_default=True,
              help="Seconds to wait.")
@command
def wait(st: State, timeout: float) -> None:
    """Wait until no migration is in flight."""
    st.admin.wait(timeout)
    if st.as_json:
        click.echo(json.dumps({"ok": True, "in_flight": []}))
    else:
        click.echo("nothing in flight")


# --- tokens ----------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Client tokens (read, write, admin), kept hashed by the controller."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["read", "write", "admin"]), required=True,
              help="read: get and scan; write: and put, append, delete; admin: everything.")
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="Write the token to this file (mode 0600) instead of printing it.")
@command
def token_create(st: State, name: str, role: str, out: str | None) -> None:
    """Create token NAME; it is shown once (the cluster keeps only its hash)."""
    tok = st.admin.token_create(name, role)
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tok + "\n")
    if st.as_json:
        click.echo(json.dumps({"name": name, "role": role, **({} if out else {"token": tok})}))
    elif out:
        click.echo(f"token {name} ({role}) written to {out}")
    else:
        click.echo(tok)


@token.command("list")
@command
def token_list(st: State) -> None:
    """Every token's name and role."""
    rows = [{"name": t["name"], "role": t["role"]} for t in st.admin.tokens()]
    _emit(st, {"tokens": rows}, lambda: table(["NAME", "ROLE"],
                                               [[r["name"], r["role"]] for r in rows]))


@token.command("revoke")
@click.argument("name")
@command
def token_revoke(st: State, name: str) -> None:
    """Revoke token NAME: every node refuses it after its next controller poll."""
    st.admin.token_revoke(name)
    _emit(st, {"ok": True, "revoked": name}, lambda: f"token {name} revoked")

