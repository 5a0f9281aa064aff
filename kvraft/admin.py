"""Operator API of a sharded cluster: configurations, controller commands, migrations.

A small synchronous client (urllib, no event loop) over the controller's HTTP routes
(``kvraft.transport.shard_api``) and the nodes' ``/v1/status``; ``shardctl`` is built on
it. Example::

    from kvraft import ShardAdmin
    admin = ShardAdmin("127.0.0.1:7001,127.0.0.1:7002", secret)
    num = admin.command({"op": "move", "key": "user42", "to": 2})["num"]
    admin.wait(60, num=num)   # until every group took it and no range is in flight

Controller followers answer ``307`` with the leader's address; this client follows it
itself (also for POST, which urllib does not) and tries every given address in turn.
Errors: :class:`CommandRefused` (4xx: the server's one-line message),
:class:`Unreachable` (no address answered; :class:`OutcomeUnknown` when a command was
sent but its answer was lost, which is never re-sent), :class:`WaitTimeout` (also a
``TimeoutError``); all are :class:`AdminError`, a :class:`kvraft.errors.KvraftError`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from kvraft.errors import KvraftError
from kvraft.transport.auth import SECRET_HEADER, new_token, token_hash
from kvraft.transport.tls import TLS, context, url

MAX_REDIRECTS = 5


class AdminError(KvraftError):
    """Base class of the errors of :class:`ShardAdmin`."""


class CommandRefused(AdminError):
    """The server refused the request (4xx); the message is the server's reason."""

    def __init__(self, message: str, *, status: int = 400, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class Unauthorized(CommandRefused):
    """The request needs the cluster secret and it was missing or wrong (401)."""


class Unreachable(AdminError):
    """No address answered (connection refused, timeouts, 5xx, no leader)."""


class OutcomeUnknown(Unreachable):
    """A command was sent but no answer came back: it may or may not have been applied
    (check with :meth:`ShardAdmin.config`). Never re-sent automatically."""


class WaitTimeout(AdminError, TimeoutError):
    """:meth:`ShardAdmin.wait` gave up; ``in_flight`` is what was still going on."""

    def __init__(self, message: str, in_flight: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class _NotController(AdminError):
    """The node asked does not host the controller (try the next address)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # we follow 307 ourselves (POST included)



def parse_addrs(addrs: Sequence[str] | str) -> list[str]:
    """``"h:p,h:p"`` or a list of them -> ``["h:p", ...]`` (``http://`` prefixes dropped)."""
    raw = addrs.split(",") if isinstance(addrs, str) else list(addrs)
    out: list[str] = []
    for a in raw:
        a = a.strip()
        for prefix in ("http://", "https://"):
            if a.startswith(prefix):
                a = a[len(prefix):]
        a = a.rstrip("/")
        if not a:
            continue
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise AdminError(f"bad address {a!r}: expected HOST:PORT")
        if a not in out:
            out.append(a)
    if not out:
        raise AdminError("no controller address given")
    return out


def _message(status: int, raw: bytes) -> tuple[str, str, dict[str, Any]]:
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = raw.decode(errors="replace").strip().splitlines()
        return (text[0] if text else f"HTTP {status}"), "", {}
    msg = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
    return " ".join(msg.split()), str(doc.get("error", "")), doc


def _overlaps(a_start: str, a_end: str | None, b_start: str, b_end: str | None) -> bool:
    return (a_end is None or b_start < a_end) and (b_end is None or a_start < b_end)


class ShardAdmin:
    """Operator calls against the controller at ``controller`` (any of its members).

    ``secret`` is the cluster secret (needed by :meth:`command`, :meth:`plan` and
    :meth:`stats`); ``timeout_s`` bounds each HTTP request.
    """

    def __init__(self, controller: list[str] | str, secret: str | None,
                 timeout_s: float = 10.0, *, tls: TLS | None = None,
                 token: str | None = None) -> None:
        self.addrs = parse_addrs(controller)
        self.secret = secret
        self.tls = tls
        self.token = token
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context(tls)))
        self.timeout_s = timeout_s
        self._leader: str | None = None
        self._last_target: str | None = None

    # --- HTTP ------------------------------------------------------------------------

    def _once(self, addr: str, method: str, path: str, body: dict[str, Any] | None,
              secret: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # A read goes with the token if there is one; an operator holding only the
        # cluster secret (a cloud cluster before any token exists) reads with it.
        if self.secret is not None and (secret or not self.token):
            headers[SECRET_HEADER] = self.secret
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url(self.tls, addr, path), data=data, method=method,
                                     headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as r:
                raw = r.read()
                doc = json.loads(raw or b"{}")
                if not isinstance(doc, dict):
                    raise ValueError("answer is not a JSON object")
                return r.status, doc, dict(r.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            msg, err, doc = _message(e.code, raw)
            doc.setdefault("message", msg)
            doc.setdefault("error", err)
            return e.code, doc, dict(e.headers or {})

    def _call_at(self, addr: str, method: str, path: str, body: dict[str, Any] | None = None,
                 *, secret: bool = False) -> dict[str, Any]:
        """One request to ``addr``, following redirects; raises CommandRefused on 4xx
        and Unreachable on connection errors, 5xx and redirect loops."""
        target = addr
        for _ in range(MAX_REDIRECTS):
            try:
                status, doc, headers = self._once(target, method, path, body, secret)
            except (OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                if method == "POST" and isinstance(reason, TimeoutError | ValueError):
                    raise OutcomeUnknown(f"{target}: no answer ({reason}); the command may "
                                         "or may not have been applied") from None
                raise Unreachable(f"{target}: {reason}") from None
            if status == 200:
                self._last_target = target
                return doc
            if status in (307, 308):
                nxt = doc.get("leader") or doc.get("redirect")
                loc = headers.get("Location") or headers.get("location")
                if not isinstance(nxt, str) and loc:
                    nxt = urllib.parse.urlsplit(loc).netloc
                if not isinstance(nxt, str) or not nxt or nxt == target:
                    raise Unreachable(f"{target}: redirect without a usable target")
                target = nxt
                continue
            msg = str(doc.get("message") or f"HTTP {status}")
            if status == 401:
                raise Unauthorized(msg,
                                   status=status, error=str(doc.get("error", "")))
            if status == 404 and "does not host the controller" in msg:
                raise _NotController(f"{target}: {msg}")
            if 400 <= status < 500 and status not in (409, 421):
                raise CommandRefused(msg, status=status, error=str(doc.get("error", "")))
            if method == "POST" and doc.get("error") == "outcome_unknown":
                raise OutcomeUnknown(f"{target}: {msg}; the command may or may not have "
                                     "been applied")
            raise Unreachable(f"{target}: {status} {msg}")
        raise Unreachable(f"{addr}: too many redirects")

    def _ctrl_call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                   secret: bool = False, retry_s: float | None = None) -> dict[str, Any]:
        """Call the controller: the last leader first, then every address, retrying
        unreachable ones for up to ``retry_s`` (default: ``timeout_s``)."""
        if secret and not self.secret and not self.token:
            raise Unauthorized("this call needs an admin token (--token-file or KVRAFT_TOKEN) "
                               "or the cluster secret (--secret-file or KVRAFT_SECRET)",
                               status=401)
        deadline = time.monotonic() + (self.timeout_s if retry_s is None else retry_s)
        last = "no address"
        while True:
            order = list(self.addrs)
            if self._leader is not None:
                order = [self._leader] + [a for a in order if a != self._leader]
            not_ctrl = 0
            for addr in order:
                try:
                    doc = self._call_at(addr, method, path, body, secret=secret)
                except OutcomeUnknown:
                    raise
                except (Unreachable, _NotController) as e:
                    last = str(e)
                    not_ctrl += isinstance(e, _NotController)
                    if addr == self._leader:
                        self._leader = None
                    continue
                self._leader = self._last_target
                return doc
            if not_ctrl == len(order):
                raise CommandRefused(f"no given address hosts the controller ({last})",
                                     status=404, error="not_found")
            if time.monotonic() >= deadline:
                raise Unreachable(f"controller unreachable ({last})")
            time.sleep(0.1)

    # --- controller --------------------------------------------------------------------

    def config(self, num: int = -1) -> dict[str, Any]:
        """Configuration ``num`` (``-1``: the latest), as ``Configuration.to_dict()``."""
        doc = self._ctrl_call("GET", f"/v1/ctrl/config?num={int(num)}")
        cfg: dict[str, Any] = doc["config"]
        return cfg

    def command(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One controller command (``{"op": "join"|"leave"|"move"|"split"|"merge", ...}``);
        answers ``{"ok", "num", "changed", "config"}``. Raises CommandRefused if refused.

        A command is sent again to another address only if the first could not be
        reached or redirected (it was not proposed there).
        """
        return self._ctrl_call("POST", "/v1/ctrl/command", doc, secret=True)

    def plan(self, apply: bool) -> dict[str, Any]:
        """The rebalance plan ``{"plan": {...}, "applied", "num"}``, applied if asked."""
        return self._ctrl_call("POST", "/v1/ctrl/plan", {"apply": bool(apply)}, secret=True)

    # --- tokens ---------------------------------------------------------------------------

    def token_create(self, name: str, role: str) -> str:
        """A new client token ``name`` with ``role`` (read, write, admin). The token is
        made here and only its SHA-256 is sent: this is the one time it is seen."""
        token = new_token()
        self.command({"op": "token_put", "name": name, "role": role,
                      "hash": token_hash(token)})
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """``[{"name", "role", "hash"}]`` of every token (hashes, never tokens)."""
        doc = self._ctrl_call("GET", "/v1/ctrl/tokens", secret=True)
        return list(doc.get("tokens", []))

    def token_revoke(self, name: str) -> None:
        self.command({"op": "token_revoke", "name": name})

    # --- nodes and groups ----------------------------------------------------------------

    def status(self, addr: str) -> dict[str, Any]:
        """``GET /v1/status`` of the node at ``addr``."""
        return self._call_at(parse_addrs(addr)[0], "GET", "/v1/status", secret=True)

    def stats(self, gid: int, addr: str) -> dict[str, Any]:
        """Keys and bytes per range of group ``gid`` as the node at ``addr`` holds them."""
        if not self.secret and not self.token:
            raise Unauthorized("stats need an admin token or the cluster secret", status=401)
        return self._call_at(addr, "GET", f"/v1/internal/stats?gid={int(gid)}", secret=True)

    @staticmethod
    def _members(cfg: dict[str, Any], gid: int) -> dict[int, str]:
        ms = cfg.get("groups", {}).get(str(gid), {})
        return {int(n): a for n, a in ms.items()}

    def group_view(self, gid: int, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """The status of group ``gid`` as its leader reports it (with ``"shards"``:
        ``num``, ``ranges`` with their state, ``pulling``, ``outgoing``) and the leader's
        ``"address"``. Members come from ``cfg`` (default: the latest configuration)."""
        cfg = self.config() if cfg is None else cfg
        members = self._members(cfg, gid)
        if not members:
            raise CommandRefused(f"group {gid} is not in configuration {cfg.get('num')}",
                                 status=404)
        best: tuple[int, dict[str, Any]] | None = None
        errs: list[str] = []
        tried: set[str] = set()
        queue = [a for _, a in sorted(members.items())]
        while queue:
            addr = queue.pop(0)
            if addr in tried:
                continue
            tried.add(addr)
            try:
                st = self._call_at(addr, "GET", "/v1/status", secret=True)
            except AdminError as e:
                errs.append(str(e))
                continue
            g = st.get("groups", {}).get(str(gid))
            if not isinstance(g, dict):
                errs.append(f"{addr}: does not host group {gid}")
                continue
            if g.get("role") == "leader":
                term = int(g.get("term") or 0)
                if best is None or term > best[0]:
                    best = (term, dict(g, address=addr))
            elif isinstance(g.get("leader_address"), str):
                queue.append(g["leader_address"])
        if best is None:
            raise Unreachable(f"group {gid} has no reachable leader"
                              + (f" ({errs[-1]})" if errs else ""))
        return best[1]

    def _views(self, cfg: dict[str, Any]) -> dict[int, dict[str, Any] | AdminError]:
        """Each data group's leader status (or why it could not be found)."""
        out: dict[int, dict[str, Any] | AdminError] = {}
        for gid in sorted(int(g) for g in cfg.get("groups", {})):
            try:
                out[gid] = self.group_view(gid, cfg)
            except AdminError as e:
                out[gid] = e
        return out

    @staticmethod
    def _pending(gid: int, g: dict[str, Any] | AdminError, want: int | None
                 ) -> list[dict[str, Any]]:
        if isinstance(g, AdminError):
            return [{"gid": gid, "kind": "unknown", "reason": str(g)}]
        sh = g.get("shards")
        if not isinstance(sh, dict):
            return [{"gid": gid, "kind": "unknown", "reason": "its leader shows no shards"}]
        out: list[dict[str, Any]] = []
        if want is not None and int(sh.get("num", 0)) < want:
            out.append({"gid": gid, "kind": "config", "num": sh.get("num"), "want": want})
        for p in sh.get("pulling", []):
            out.append({"gid": gid, "kind": "pulling", **p})
        for o in sh.get("outgoing", []):
            out.append({"gid": gid, "kind": "outgoing", **o})
        return out

    def _in_flight(self, cfg: dict[str, Any], views: dict[int, dict[str, Any] | AdminError],
                   num: int | None) -> list[dict[str, Any]]:
        want = max(int(cfg["num"]), num or 0)
        out: list[dict[str, Any]] = []
        for gid, g in views.items():
            out.extend(self._pending(gid, g, want))
        if int(cfg["num"]) > 0:
            try:
                prev = self.config(int(cfg["num"]) - 1)
            except AdminError:
                prev = {}
            for gid in sorted(int(g) for g in prev.get("groups", {})):
                if gid in views:
                    continue
                try:
                    g = self.group_view(gid, prev)
                except AdminError:
                    continue  # a group that left and is gone: nothing to wait for
                out.extend(self._pending(gid, g, None))
        return out

    def in_flight(self, num: int | None = None) -> list[dict[str, Any]]:
        """Migrations not finished: for every data group of the latest configuration
        (and of the one before, which a group that just left is still in), whether its
        leader is behind the latest number (or ``num`` if larger), pulls ranges, or
        holds outgoing (sending or gc) ranges. A group of the latest configuration whose
        leader cannot be found is listed as ``"unknown"``. Each item has ``"gid"`` and
        ``"kind"`` (``config``, ``pulling``, ``outgoing`` or ``unknown``)."""
        cfg = self.config()
        return self._in_flight(cfg, self._views(cfg), num)

    def overview(self) -> dict[str, Any]:
        """What ``shardctl show`` prints: the latest configuration's number, its ranges
        with their states (:func:`range_states`), every group (members, leader, keys and
        bytes, the configuration its leader took) and the migrations in flight. Keys and
        bytes are None without the secret."""
        cfg = self.config()
        views = self._views(cfg)
        shards = {g: (v.get("shards") if isinstance(v, dict) else None)
                  for g, v in views.items()}
        groups = []
        for gid, v in views.items():
            row: dict[str, Any] = {
                "gid": gid, "members": cfg["groups"][str(gid)], "leader": None,
                "leader_id": None, "keys": None, "bytes": None, "config": None,
                "ranges": sum(1 for r in cfg["ranges"] if r[3] == gid)}
            if isinstance(v, AdminError):
                row["error"] = str(v)
            else:
                row.update(leader=v.get("address"), leader_id=v.get("node"),
                           config=(v.get("shards") or {}).get("num"))
                if self.secret:
                    try:
                        st = self.stats(gid, v["address"])
                        row["keys"] = sum(int(r["keys"]) for r in st.get("ranges", []))
                        row["bytes"] = sum(int(r["bytes"]) for r in st.get("ranges", []))
                    except AdminError as e:
                        if isinstance(e, Unauthorized):
                            raise
                        row["error"] = str(e)
            groups.append(row)
        return {"num": cfg["num"], "ranges": range_states(cfg, shards), "groups": groups,
                "in_flight": self._in_flight(cfg, views, None)}

    def wait(self, timeout_s: float, num: int | None = None, poll_s: float = 0.1) -> None:
        """Poll until :meth:`in_flight` is empty (and, with ``num``, every group took it);
        raises :class:`WaitTimeout` listing what is still in flight."""
        deadline = time.monotonic() + timeout_s
        pending: list[dict[str, Any]] = []
        while True:
            try:
                pending = self.in_flight(num)
            except Unreachable as e:
                pending = [{"gid": 0, "kind": "unknown", "reason": str(e)}]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"still in flight after {timeout_s:g}s: "
                                  + describe_in_flight(pending), pending)
            time.sleep(poll_s)


def describe_in_flight(items: list[dict[str, Any]]) -> str:
    """A one-line summary of :meth:`ShardAdmin.in_flight` items."""
    parts = []
    for it in items:
        g, kind = it.get("gid"), it.get("kind")
        iv = f"[{it.get('start')!r}, {it.get('end')!r})"
        if kind == "config":
            parts.append(f"group {g} at configuration {it.get('num')} of {it.get('want')}")
        elif kind == "pulling":
            parts.append(f"group {g} pulling {iv} from group {it.get('from')}")
        elif kind == "outgoing":
            parts.append(f"group {g} {it.get('state')} {iv} to group {it.get('to')}")
        else:
            parts.append(f"group {g}: {it.get('reason', 'unknown')}")
    return "; ".join(parts) or "nothing"


def range_states(cfg: dict[str, Any], views: Mapping[int, dict[str, Any] | None]
                 ) -> list[dict[str, Any]]:
    """Every range of ``cfg`` with its state derived from the groups' shard views
    (``{gid: shards doc or None}``): ``pulling`` if its owner pulls it, ``moving`` if
    its previous owner still sends it (or the owner has not taken ``cfg`` yet),
    ``gc`` if the previous owner is deleting its old copy, else ``serving``
    (``unknown`` if the owner's view could not be read)."""
    out = []
    for rid, start, end, gid, version in cfg["ranges"]:
        state = "serving"
        view = views.get(gid)
        if gid == 0:
            state = "unassigned"
        elif view is None:
            state = "unknown"
        else:
            mine = {r["id"]: r for r in view.get("ranges", [])}
            if mine.get(rid, {}).get("state") == "pulling" or any(
                    p.get("range") == rid for p in view.get("pulling", [])):
                state = "pulling"
            elif rid not in mine and int(view.get("num", 0)) < int(cfg["num"]):
                state = "moving"
            else:
                og_states = {o.get("state") for g, v in views.items() if v is not None
                             and g != gid for o in v.get("outgoing", [])
                             if o.get("to") == gid
                             and _overlaps(start, end, o.get("start", ""), o.get("end"))}
                if "sending" in og_states:
                    state = "moving"
                elif "gc" in og_states:
                    state = "gc"
        out.append({"id": rid, "start": start, "end": end, "group": gid, "version": version,
                    "state": state})
    return out
