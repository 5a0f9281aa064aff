"""A local cluster of real ``kvraft serve`` processes on 127.0.0.1, for tests and chaos.

Each node is its own OS process (``python -m kvraft serve``) that can be killed with
SIGKILL, paused with SIGSTOP, restarted on the same data directory, and partitioned
through the transport's admin endpoint (which requires the cluster secret).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvraft import certs as certs_mod
from kvraft.admin import ShardAdmin
from kvraft.bootstrap import bootstrap, wait_groups_at
from kvraft.client import AsyncClient, Client
from kvraft.config import ReplicaSettings
from kvraft.testing.moto import free_port
from kvraft.transport.tls import TLS, TLSFiles, context, url

_RAFT = ReplicaSettings()


class ClusterError(RuntimeError):
    """The local cluster did not reach the expected state in time."""


class LocalCluster:
    """``nodes`` processes, each a member of every group in ``groups``.

    By default the nodes host the controller (group 0) and one data group (1), and
    :meth:`start` gives the controller its first configuration (the data groups joined,
    the key space split between them). A cluster without group 0 is pointed at another
    one's controller with ``controller`` and must share its ``secret``; its data groups
    are joined by :meth:`join_groups` (the caller decides when).

    ``tick_ms`` (25) is a deliberate override of the node default (faster tests); the
    election and heartbeat ticks default to the node's own (``kvraft.config``).
    """

    def __init__(self, root: str | Path, *, nodes: int = 3, tick_ms: int = 25,
                 election_ticks: int = _RAFT.election_ticks,
                 heartbeat_ticks: int = _RAFT.heartbeat_ticks,
                 extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None,
                 ports: dict[int, int] | None = None,
                 groups: tuple[int, ...] = (0, 1), first_id: int = 1,
                 controller: list[str] | None = None, secret: str | None = None,
                 bootstrap: bool = True, tls: bool = False, auth: bool = False,
                 certs: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ids = list(range(first_id, first_id + nodes))
        ports = ports or {i: free_port() for i in self.ids}
        self.addrs = {i: f"127.0.0.1:{ports[i]}" for i in self.ids}
        self.secret = secret or secrets.token_hex(8)
        self.groups = tuple(groups)
        self.controller = controller or ([self.addrs[i] for i in self.ids] if 0 in groups
                                         else [])
        self.bootstrap_on_start = bootstrap and 0 in groups
        self.tick_ms = tick_ms
        self.args = ["--tick-ms", str(tick_ms), "--election-ticks", str(election_ticks),
                     "--heartbeat-ticks", str(heartbeat_ticks), *(extra_args or [])]
        self.env = dict(os.environ if env is None else env)
        self.env.update({"KVRAFT_SECRET": self.secret, "PYTHONUNBUFFERED": "1"})
        self.certs = (certs or self.root / "certs") if tls else None
        """With ``tls``: the cluster CA and one certificate per node (mutual TLS), and
        an ``admin`` client certificate for this harness's own calls."""
        self.tls: TLS | None = None
        if self.certs is not None:
            if not (self.certs / certs_mod.CA_CERT).exists():
                certs_mod.init_ca(self.certs)
            if not (self.certs / "client-admin.crt").exists():
                certs_mod.issue_client(self.certs, "admin")
            self.tls = TLS(TLSFiles(self.certs / certs_mod.CA_CERT,
                                    self.certs / "client-admin.crt",
                                    self.certs / "client-admin.key"))
        self.auth = auth
        self.token: str | None = None
        """With ``auth``: an admin token made once the controller serves (clients of
        this harness use it; the harness's own calls use the cluster secret)."""
        self.args += ["--enable-fault-injection", "--auth" if auth else "--no-auth"]
        if self.certs is None:
            self.args.append("--insecure")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.bootstrap_ids = list(self.ids)
        self.joined: dict[int, str] = {}
        """Nodes added after bootstrap: id -> the member they join through."""

    # --- processes ---------------------------------------------------------------------

    @property
    def addr_list(self) -> list[str]:
        return [self.addrs[i] for i in self.ids]

    def data_dir(self, i: int) -> Path:
        return self.root / f"node-{i}"

    def log_path(self, i: int) -> Path:
        return self.root / f"node-{i}.log"

    @property
    def data_groups(self) -> list[int]:
        return [g for g in self.groups if g != 0]

    def start(self) -> LocalCluster:
        for i in self.ids:
            self.start_node(i)
        if self.bootstrap_on_start:
            self.join_groups()
        return self

    def members(self) -> dict[int, str]:
        return dict(self.addrs)

    def join_groups(self, extra: dict[int, dict[int, str]] | None = None,
                    timeout_s: float = 60.0) -> int:
        """Bootstrap the controller with this cluster's data groups (and ``extra``) and
        wait until they serve; returns the configuration number."""
        groups = {g: self.members() for g in self.data_groups}
        groups.update(extra or {})
        num = bootstrap(self.controller, self.secret, groups, timeout_s=timeout_s, tls=self.tls)
        wait_groups_at(self.addr_list, self.data_groups, num, timeout_s, secret=self.secret,
                       tls=self.tls)
        self.wait_config_known(num, timeout_s)
        if self.auth and self.token is None:
            self.token = self.admin().token_create("harness", "admin")
            self.wait_token_known(self.token)
        return num

    def wait_config_known(self, num: int, timeout_s: float = 60.0) -> None:
        """Wait until every running node's view of the controller has reached ``num``
        (a follower that has not heard yet answers 421, not a redirect to its leader)."""
        def known(i: int) -> bool:
            try:
                code, doc = self._request(i, "GET", "/v1/status", timeout_s=1.0)
            except (OSError, ValueError):
                return False
            return code == 200 and int(doc.get("config", 0)) >= num

        deadline = time.monotonic() + timeout_s
        pending = [i for i in self.ids if self.running(i) and i not in self.paused]
        while pending and time.monotonic() < deadline:
            pending = [i for i in pending if not known(i)]
            if pending:
                time.sleep(0.05)
        if pending:
            raise ClusterError(f"nodes {pending} did not learn configuration {num} within "
                               f"{timeout_s}s; logs in {self.root}")

    def admin(self) -> ShardAdmin:
        """An operator's handle on the controller (with the cluster secret)."""
        return ShardAdmin(self.controller, self.secret, tls=self.tls)

    def client(self, addresses: list[str] | None = None, **kwargs: Any) -> Client:
        """A :class:`kvraft.Client` for this cluster (TLS and the token if on)."""
        kwargs.setdefault("tls", self.tls)
        kwargs.setdefault("token", self.token)
        return Client(addresses or self.addr_list, **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncClient:
        kwargs.setdefault("tls", self.tls)
        kwargs.setdefault("token", self.token)
        return AsyncClient(self.addr_list, **kwargs)

    def token_works(self, i: int, token: str) -> bool:
        """Whether node i accepts ``token`` (for a read of the shard map)."""
        req = urllib.request.Request(url(self.tls, self.addrs[i], "/v1/shards"),
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2.0, context=context(self.tls)):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return False
            raise

    def wait_token_known(self, token: str, known: bool = True, timeout_s: float = 30.0,
                         nodes: list[int] | None = None) -> None:
        """Wait until every running node accepts (or refuses) ``token``."""
        deadline = time.monotonic() + timeout_s
        todo = set(nodes or [i for i in self.ids if self.running(i)])
        while todo and time.monotonic() < deadline:
            todo = {i for i in todo if self.token_works(i, token) != known}
            if todo:
                time.sleep(0.05)
        if todo:
            raise ClusterError(f"nodes {sorted(todo)} still {'refuse' if known else 'accept'} "
                               "the token")

    def ctrl(self, op: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Send one controller command (``{"op": "move", ...}``) through any member."""
        return self._follow(lambda: list(self.controller), "POST", "/v1/ctrl/command", op,
                            timeout_s, final=(400,), attempt_s=2.0)

    def shard_view(self, group: int) -> dict[str, Any] | None:
        """The shards document of the leader of ``group``, if any answers."""
        lead = self.leader(group)
        st = self.status(lead, group) if lead is not None else None
        return None if st is None else st.get("shards")

    def wait_shards(self, group: int, num: int, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until ``group``'s leader has taken configuration ``num`` and installed
        everything it gained (nothing pulling)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = self.shard_view(group)
            if v is not None and v["num"] >= num and not v["pulling"]:
                return v
            time.sleep(0.05)
        raise ClusterError(f"group {group} did not reach configuration {num}; logs in "
                           f"{self.root}")

    def start_node(self, i: int) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            raise ClusterError(f"node {i} is already running")
        argv = [sys.executable, "-m", "kvraft", "serve", "--id", str(i),
                "--listen", self.addrs[i], "--data-dir", str(self.data_dir(i)), *self.args,
                *self._tls_args(i)]
        if i in self.joined:
            argv += ["--join", self.joined[i]]
        else:
            for j in self.bootstrap_ids:
                argv += ["--peer", f"{j}={self.addrs[j]}"]
        for g in self.groups:
            argv += ["--group", str(g)]
        if 0 not in self.groups:
            argv += ["--controller", ",".join(self.controller)]
        with open(self.log_path(i), "ab") as log:
            self.procs[i] = subprocess.Popen(argv, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT)
        self.paused.discard(i)

    def _tls_args(self, i: int) -> list[str]:
        if self.certs is None:
            return []
        crt = self.certs / f"node-{i}.crt"
        if not crt.exists():
            certs_mod.issue_node(self.certs, i, ["127.0.0.1", "localhost"])
        return ["--tls-ca", str(self.certs / certs_mod.CA_CERT), "--tls-cert", str(crt),
                "--tls-key", str(self.certs / f"node-{i}.key")]

    def url(self, i: int, path: str = "") -> str:
        """``http(s)://`` node i's address and ``path``."""
        return url(self.tls, self.addrs[i], path)

    def new_node(self, via: int | None = None, *, start: bool = True) -> int:
        """A new node (the next free id) started with ``--join``: it hosts this cluster's
        groups but is a member of none until added (see :meth:`member`)."""
        i = max(self.ids) + 1
        self.ids.append(i)
        self.addrs[i] = f"127.0.0.1:{free_port()}"
        self.joined[i] = self.addrs[via if via is not None else self.bootstrap_ids[0]]
        if start:
            self.start_node(i)
        return i

    def member(self, op: str, node: int, *, group: int = 1, via: int | None = None,
               timeout_s: float = 120.0, **extra: Any) -> dict[str, Any]:
        """Run a membership change (``add``, ``add-learner``, ``promote``, ``remove``)
        through node ``via`` (any running member by default), following redirects."""
        body: dict[str, Any] = {"op": op, "group": group, "id": node,
                                "timeout_s": timeout_s, **extra}
        if op in ("add", "add-learner"):
            body.setdefault("address", self.addrs[node])
        return self._admin_call("POST", "/v1/admin/members", body, via, timeout_s)

    def members_of(self, group: int = 1, via: int | None = None) -> dict[str, Any]:
        return self._admin_call("GET", f"/v1/admin/members?group={group}", None, via, 10.0)

    def _admin_call(self, method: str, path: str, body: Any, via: int | None,
                    timeout_s: float) -> dict[str, Any]:
        def addrs() -> list[str]:
            nodes = [via] if via is not None else [
                i for i in self.ids if self.running(i) and i not in self.paused]
            return [self.addrs[i] for i in nodes]
        return self._follow(addrs, method, path, body,
                            timeout_s, final=(400, 401, 404), attempt_s=timeout_s)

    def _follow(self, addrs: Callable[[], list[str]], method: str, path: str, body: Any,
                timeout_s: float, *, final: tuple[int, ...], attempt_s: float
                ) -> dict[str, Any]:
        """Try each address until one answers 200, following 307s to the leader (which
        may be a node added later); a status in ``final`` fails at once."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            for addr in addrs():
                for _hop in range(3):
                    try:
                        code, doc = self._request_addr(addr, method, path, body,
                                                       timeout_s=attempt_s)
                    except (OSError, ValueError) as e:
                        last = e
                        break
                    if code == 307 and isinstance(doc, dict) and doc.get("leader"):
                        addr = doc["leader"]
                        continue
                    if code == 200:
                        return dict(doc)
                    if code in final:
                        raise ClusterError(f"{method} {path} {body}: {code} {doc}")
                    last = (code, doc)
                    break
            time.sleep(0.1)
        raise ClusterError(f"{method} {path} {body} did not succeed: {last}")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if sig == signal.SIGKILL and i in self.paused:
            self.paused.discard(i)
        p.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            p.wait(timeout=15)

    def pause(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def running(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.poll() is None

    def stop(self) -> None:
        for i in list(self.procs):
            if i in self.paused:
                self.resume(i)
            p = self.procs[i]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP helpers --------------------------------------------------------------------

    def _request(self, i: int, method: str, path: str, body: Any = None,
                 timeout_s: float = 2.0) -> tuple[int, Any]:
        return self._request_addr(self.addrs[i], method, path, body, timeout_s)

    def _request_addr(self, addr: str, method: str, path: str, body: Any = None,
                      timeout_s: float = 2.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url(self.tls, addr, path), data=data, method=method,
                                     headers={"X-Kvraft-Secret": self.secret,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=context(self.tls)) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def status(self, i: int, group: int = 1) -> dict[str, Any] | None:
        """Node i's status of ``group``, or None if it does not answer."""
        if not self.running(i) or i in self.paused:
            return None
        try:
            code, doc = self._request(i, "GET", "/v1/status", timeout_s=1.0)
        except (OSError, ValueError):
            return None
        if code != 200:
            return None
        g: dict[str, Any] | None = doc.get("groups", {}).get(str(group))
        return g

    def leader(self, group: int = 1) -> int | None:
        """The node that says it leads (the one with the highest term if several)."""
        best: tuple[int, int] | None = None
        for i in self.ids:
            st = self.status(i, group)
            if st and st.get("role") == "leader" and (best is None or st["term"] > best[0]):
                best = (st["term"], i)
        return best[1] if best else None

    def wait_for_leader(self, timeout_s: float = 20.0, exclude: set[int] | None = None,
                        group: int = 1) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lead = self.leader(group)
            if lead is not None and lead not in (exclude or set()):
                return lead
            time.sleep(0.05)
        raise ClusterError(f"no leader within {timeout_s}s; logs in {self.root}")

    def wait_converged(self, timeout_s: float = 20.0, group: int = 1) -> int:
        """Wait until every running node names the same leader; returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lead = self.leader(group)
            if lead is not None:
                up = [i for i in self.ids if self.running(i) and i not in self.paused]
                sts = [self.status(i, group) for i in up]
                if all(st is not None and st.get("leader") == lead for st in sts):
                    return lead
            time.sleep(0.05)
        raise ClusterError(f"nodes did not agree on a leader within {timeout_s}s")

    def wait_applied(self, nodes: list[int], index: int, timeout_s: float = 20.0,
                     group: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sts = [self.status(i, group) for i in nodes]
            if all(s is not None and s["applied"] >= index for s in sts):
                return
            time.sleep(0.05)
        raise ClusterError(f"nodes {nodes} did not apply index {index} within {timeout_s}s")

    def set_faults(self, i: int, **rules: Any) -> None:
        code, doc = self._request(i, "PUT", "/v1/admin/faults", rules)
        if code != 200:
            raise ClusterError(f"node {i} refused faults {rules}: {code} {doc}")

    def heal(self, nodes: list[int] | None = None) -> None:
        for i in nodes or self.ids:
            if self.running(i) and i not in self.paused:
                self._request(i, "DELETE", "/v1/admin/faults")

    def isolate(self, i: int) -> None:
        """Cut node i off from every other node, in both directions."""
        others = [j for j in self.ids if j != i]
        self.set_faults(i, blocked_out=others, blocked_in=others)
        for j in others:
            if self.running(j) and j not in self.paused:
                self.set_faults(j, blocked_out=[i], blocked_in=[i])
