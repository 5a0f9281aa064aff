"""``kvraft member ...`` and ``kvraft transfer-leader``: a group's membership.

Any node of the cluster can be asked (``--addr``): the call reaches the group's leader
(a member redirects, another node forwards). They need an admin token or the cluster
secret (``kvraft.credentials``: a file, the environment, or the local ``kvraft up``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft import credentials
from kvraft.admin import AdminError, CommandRefused, OutcomeUnknown, ShardAdmin, parse_addrs
from kvraft.credentials import Credentials

F = TypeVar("F", bound=Callable[..., Any])
CLUSTER_FILE = Path("kvraft-data") / "cluster.json"


def _layout() -> dict[str, Any]:
    path = Path(os.environ.get("KVRAFT_CLUSTER_FILE", str(CLUSTER_FILE)))
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _admin(addrs: str | None, creds: Credentials, timeout_s: float) -> ShardAdmin:
    layout = _layout()
    if not addrs:
        nodes = layout.get("nodes", {})
        addrs = ",".join(nodes[n] for n in sorted(nodes, key=int)) if nodes else ""
    if not addrs:
        raise click.ClickException("no node to ask: pass --addr HOST:PORT,... (or set "
                                   "KVRAFT_ADDRS), or run `kvraft up` here")
    if not creds.secret and not creds.token:
        raise click.ClickException("membership calls need an admin token (--token-file or "
                                   "KVRAFT_TOKEN) or the cluster secret (--secret-file or "
                                   "KVRAFT_SECRET)")
    return ShardAdmin(parse_addrs(addrs), creds.secret, timeout_s=timeout_s, tls=creds.tls,
                      token=creds.token)


def _call(admin: ShardAdmin, method: str, path: str, body: dict[str, Any] | None) -> Any:
    """Ask each address in turn until one answers; a refusal or an unknown outcome of a
    change is final (a change is never sent twice)."""
    last: Exception | None = None
    for addr in admin.addrs:
        try:
            return admin._call_at(addr, method, path, body, secret=True)
        except (CommandRefused, OutcomeUnknown) as e:
            raise click.ClickException(str(e)) from None
        except AdminError as e:
            last = e
    raise click.ClickException(f"no node answered: {last}")


def _options(f: F) -> F:
    f = click.option("--addr", "addrs", envvar="KVRAFT_ADDRS", metavar="HOST:PORT,...",
                     help="Nodes to ask (any node of the cluster).")(f)
    f = credentials.options(f)
    f = click.option("--group", "gid", type=click.IntRange(0), required=True,
                     help="The group (0 is the controller).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")(f)
    return f


def _render_members(doc: dict[str, Any]) -> str:
    lines = [f"group {doc['group']}: leader {doc.get('leader') or 'unknown'} "
             f"(term {doc.get('term')}), commit {doc.get('commit')}"]
    progress = doc.get("progress") or {}
    addrs = doc.get("addresses", {})
    rows = [("ID", "ROLE", "ADDRESS", "MATCH", "BEHIND", "STATE")]
    for kind in ("voters", "learners"):
        for n in doc.get(kind, []):
            p = progress.get(str(n), {})
            role = "leader" if n == doc.get("leader") else kind[:-1]
            rows.append((str(n), role, str(addrs.get(str(n)) or "?"),
                         str(p.get("match", "-")), str(p.get("behind", "-")),
                         str(p.get("state", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    if doc.get("pending_conf_index", 0) > doc.get("commit", 0):
        lines.append(f"a membership change (index {doc['pending_conf_index']}) is not "
                     "committed yet")
    return "\n".join(lines)


@click.group("member")
def member_command() -> None:
    """List or change a group's members (voters and learners)."""


def _leader_doc(admin: ShardAdmin, gid: int) -> dict[str, Any]:
    doc: dict[str, Any] = _call(admin, "GET", f"/v1/admin/members?group={gid}", None)
    lead = doc.get("leader_address")
    if doc.get("role") != "leader" and isinstance(lead, str):
        try:
            return dict(admin._call_at(lead, "GET", f"/v1/admin/members?group={gid}",
                                       None, secret=True))
        except AdminError:
            pass  # the member's own view is still worth showing
    return doc


@member_command.command("list")
@_options
def member_list(addrs: str | None, creds: Credentials, gid: int, as_json: bool) -> None:
    """Voters and learners of the group, with each one's progress (from the leader)."""
    doc = _leader_doc(_admin(addrs, creds, 10.0), gid)
    click.echo(json.dumps(doc, indent=2) if as_json else _render_members(doc))


def _change(addrs: str | None, creds: Credentials, as_json: bool, timeout_s: float,
            body: dict[str, Any]) -> None:
    body["timeout_s"] = timeout_s
    doc = _call(_admin(addrs, creds, timeout_s + 10.0), "POST", "/v1/admin/members", body)
    click.echo(json.dumps(doc, indent=2) if as_json else
               f"{doc['message']} (voters {doc['voters']}, learners {doc['learners']})")


_timeout = click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 3600),
                        default=300.0, show_default=True,
                        help="Seconds to wait (catching up a new node can take a while).")
_node = click.option("--id", "nid", type=click.IntRange(1), required=True, help="Node id.")


@member_command.command("add")
@_options
@_node
@click.option("--address", required=True, metavar="HOST:PORT", help="The new node's address.")
@click.option("--no-promote", is_flag=True,
              help="Leave it a learner (promote later with `member promote`).")
@_timeout
def member_add(addrs: str | None, creds: Credentials, gid: int, as_json: bool, nid: int,
               address: str, no_promote: bool, timeout_s: float) -> None:
    """Add a node: a learner first, promoted to voter once it has caught up."""
    _change(addrs, creds, as_json, timeout_s, {"op": "add", "group": gid, "id": nid,
                                                "address": address, "promote": not no_promote})


@member_command.command("add-learner")
@_options
@_node
@click.option("--address", required=True, metavar="HOST:PORT", help="The new node's address.")
@_timeout
def member_add_learner(addrs: str | None, creds: Credentials, gid: int, as_json: bool,
                       nid: int, address: str, timeout_s: float) -> None:
    """Add a node as a learner (it receives the log, never votes)."""
    _change(addrs, creds, as_json, timeout_s, {"op": "add-learner", "group": gid, "id": nid,
                                                "address": address})


@member_command.command("promote")
@_options
@_node
@_timeout
def member_promote(addrs: str | None, creds: Credentials, gid: int, as_json: bool, nid: int,
                   timeout_s: float) -> None:
    """Make a learner a voter once it has caught up."""
    _change(addrs, creds, as_json, timeout_s, {"op": "promote", "group": gid, "id": nid})


@member_command.command("remove")
@_options
@_node
@_timeout
def member_remove(addrs: str | None, creds: Credentials, gid: int, as_json: bool, nid: int,
                  timeout_s: float) -> None:
    """Remove a voter or learner (the leader too; a node that is down too)."""
    _change(addrs, creds, as_json, timeout_s, {"op": "remove", "group": gid, "id": nid})


@click.command("transfer-leader")
@_options
@click.option("--to", "to", type=click.IntRange(1), required=True, help="The new leader.")
@_timeout
def transfer_leader_command(addrs: str | None, creds: Credentials, gid: int, as_json: bool,
                            to: int, timeout_s: float) -> None:
    """Hand the group's leadership to voter --to (drain a node before maintenance)."""
    doc = _call(_admin(addrs, creds, timeout_s + 10.0), "POST", "/v1/admin/transfer-leader",
                {"group": gid, "to": to, "timeout_s": timeout_s})
    click.echo(json.dumps(doc, indent=2) if as_json else doc["message"])
