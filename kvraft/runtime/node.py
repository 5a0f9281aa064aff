"""Node assembly: one OS process, one aiohttp server, one or more replicas.

A node hosts replicas keyed by group id (multi-raft): peer traffic is routed to the
replica of the frame's group, and client requests to the replica of the group that
owns the key by the newest configuration the node knows. Group 0 is the shard
controller; every other group is a data group. Each listed group has this node and
its ``--peer``s as members (every member passes the same peers and groups).

A request for a key owned by a group this node does not host is redirected (307) to
a member of that group; a hosted group that refuses the key at apply time
(``wrong_group``) makes the node refresh its view of the controller and redirect if
the key moved elsewhere.

Data directory layout::

    <data-dir>/LOCK                 flock'ed while the node runs
    <data-dir>/group-<gid>/raft.db  the Raft log and hard state
    <data-dir>/group-<gid>/state.db the group's state machine (key-value data and
                                    sessions, or the controller's configurations)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kvraft import errors
from kvraft.addresses import split_hostport
from kvraft.config import NodeSettings
from kvraft.kv.commands import Command
from kvraft.kv.machine import Result, Status
from kvraft.raft import ConfState, Message, Role
from kvraft.runtime.backup import BackupManager, NotLeaderForBackup
from kvraft.runtime.membership import MembershipMixin
from kvraft.runtime.metrics import Metrics
from kvraft.runtime.migration import ConfigSource, ShardDriver
from kvraft.runtime.peers import GroupCaller
from kvraft.runtime.replica import Replica
from kvraft.runtime.shard_service import ShardServiceMixin
from kvraft.storage.ctrlstate import ControllerStore
from kvraft.storage.ports import MachineStore
from kvraft.storage.snapshots import LocalSnapshot
from kvraft.storage.statedb import NotOwned, StateStore
from kvraft.transport.admin import AdminAPI
from kvraft.transport.aio import raise_if_cancelled
from kvraft.transport.auth import Guard
from kvraft.transport.client_stream import ClientStreamAPI
from kvraft.transport.http_api import ClientAPI
from kvraft.transport.member_api import MemberAPI
from kvraft.transport.peer import PeerTransport
from kvraft.transport.server import GuardedSite
from kvraft.transport.shard_api import ShardAPI
from kvraft.transport.snapshot_stream import IncomingSnapshot, SnapshotReceiver, send_snapshot
from kvraft.transport.tls import TLS, url

log = logging.getLogger("kvraft.node")

CONTROLLER = 0


class LoopLagMonitor:
    """Measures how late the event loop wakes up: the longest stall of the node."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.max_s = 0.0
        self.recent_max_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = loop.time() - t - self.interval_s
            self.max_s = max(self.max_s, lag)
            self.recent_max_s = max(self.recent_max_s, lag)


@dataclass(slots=True)
class NodeConfig:
    node_id: int
    listen: str
    peers: dict[int, str]
    """Every member of the group, this node included: node id -> host:port."""
    data_dir: Path
    secret: str
    groups: tuple[int, ...] = ()
    """Groups this node is a bootstrap member of; 0 is the controller."""
    controller: tuple[str, ...] = ()
    """Addresses of controller members (needed when group 0 is not hosted here)."""
    join: str | None = None
    """A member of the cluster to join through: this node's groups start with no
    bootstrap membership and wait to be added (``kvraft member add``)."""
    settings: NodeSettings = field(default_factory=NodeSettings)
    """Everything with a default (kvraft.config defines each one)."""
    tls: TLS | None = None
    """Serve and call over TLS with these files (mutual TLS between nodes); None: plain
    HTTP (``--insecure``)."""
    auth: bool = False
    """Require a token (or the cluster secret) on every call but /health."""
    fault_injection: bool = False
    """Serve ``/v1/admin/faults`` (the nemesis's hook); otherwise it is a 404."""

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("--id must be a positive integer")
        if not self.groups:
            raise ValueError("--group is required: the groups this node is a member of "
                             "(0 is the shard controller), e.g. --group 0 --group 1")
        if len(set(self.groups)) != len(self.groups) or any(g < 0 for g in self.groups):
            raise ValueError("--group values must be distinct non-negative integers")
        if CONTROLLER not in self.groups and not self.controller and not self.join:
            raise ValueError("a node that does not host group 0 needs --controller "
                             "HOST:PORT,... (the controller's members) or --join HOST:PORT")
        if self.join is not None:
            _split_hostport(self.join)
            if set(self.peers) - {self.node_id}:
                raise ValueError("--join and --peer exclude each other: a joining node learns "
                                 "its group's members from the group")
        if self.node_id not in self.peers:
            self.peers[self.node_id] = self.listen
        if not self.secret:
            raise ValueError("a cluster secret is required (--secret-file, KVRAFT_SECRET, or "
                             "secret_file in the config file)")
        _split_hostport(self.listen)
        for addr in self.peers.values():
            _split_hostport(addr)
        for addr in self.controller:
            _split_hostport(addr)

    def controller_addrs(self) -> list[str]:
        """The controller members this node starts with (it learns changes later)."""
        if self.controller:
            return list(self.controller)
        if self.join is not None:
            return [self.join]
        return [a for _, a in sorted(self.peers.items())]


_split_hostport = split_hostport


class Node(ShardServiceMixin, MembershipMixin):
    def __init__(self, config: NodeConfig) -> None:
        self.cfg = config
        self.replicas: dict[int, Replica] = {}
        self.addresses: dict[int, str] = dict(config.peers)
        """Every node this one knows how to reach: the bootstrap peers, then the
        addresses that membership entries carry."""
        self._controller_seed = config.controller_addrs()
        self.removed: set[int] = set()
        self.caller = GroupCaller(config.secret, tls=config.tls)
        self.tokens: dict[str, str] | None = None
        """The controller's token table as last polled: sha256 -> role (None until the
        first poll answers: unknown tokens then get a 503, not a 401)."""
        self._tokens_version = -1
        self.guard = Guard(config.secret, config.tls, required=config.auth,
                           tokens=lambda: self.tokens)
        self.configs = ConfigSource(self.caller, self.controller_addrs)
        self.configs.on_controller = self._learn_controller
        self.drivers: dict[int, ShardDriver] = {}
        self.transport: PeerTransport | None = None
        self._runner: web.AppRunner | None = None
        self.site: GuardedSite | None = None
        self._lock_fd: int | None = None
        self.stopped = asyncio.Event()
        backup = config.settings.backup
        self.backups = BackupManager(backup, config.node_id) if backup.enabled else None
        self._tasks: list[asyncio.Task[None]] = []
        self.loop_lag = LoopLagMonitor()
        self.metrics = Metrics(self.status)
        self.client_stream = ClientStreamAPI(self, config.settings.limits,
                                             observe=self.metrics.observe, guard=self.guard)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.transport = PeerTransport(node_id=cfg.node_id, secret=cfg.secret,
                                       deliver=self._deliver, unreachable=self._unreachable,
                                       listen=cfg.peers.get(cfg.node_id, cfg.listen),
                                       learn=self._learn_peer, tls=cfg.tls,
                                       limits=cfg.settings.limits)
        await self.transport.start()
        # A joining node has no bootstrap membership: it never campaigns, and waits for
        # the group's leader to add it (the log or a snapshot then tells it the rest).
        conf = (ConfState(frozenset()) if cfg.join is not None else
                ConfState(frozenset(cfg.peers), addresses=tuple(sorted(cfg.peers.items()))))
        await self._check_restored()
        for gid in cfg.groups:
            replica = Replica(node_id=cfg.node_id, group_id=gid, conf=conf,
                              data_dir=cfg.data_dir / f"group-{gid}",
                              send=self.transport.send, settings=cfg.settings.replica,
                              address_of=self.addresses.get, open_store=self._opener(gid),
                              stream_snapshot=self._stream_snapshot, on_conf=self._on_conf)
            await replica.start()
            self.replicas[gid] = replica
            if gid != CONTROLLER:
                self.drivers[gid] = ShardDriver(replica, self.configs, self.caller,
                                               cfg.settings.shard)
                view = self._kv_store(replica).view()
                if view is not None:  # route by what this group has taken until we hear more
                    self.configs.note(view.config)
        for peer, addr in cfg.peers.items():
            if peer != cfg.node_id:
                self.transport.set_peer(peer, addr)
        limits = cfg.settings.limits
        app = web.Application(client_max_size=limits.max_value_bytes * 2 + 65536,
                              middlewares=[self.guard.middleware()])
        ClientAPI(self, limits, observe=self.metrics.observe).add_routes(app)
        self.client_stream.add_routes(app)
        ShardAPI(self, limits).add_routes(app)
        MemberAPI(self, default_timeout_s=300.0).add_routes(app)
        app.router.add_get("/metrics", self.metrics.handle)
        if cfg.fault_injection:
            AdminAPI(self.transport).add_routes(app)
        app.router.add_post("/v1/admin/backup", self._handle_backup)
        self.transport.add_routes(app)
        SnapshotReceiver(self.transport, self._spool_dir, self._receive_snapshot).add_routes(app)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout_s,
            max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers)
        await self._runner.setup()
        host, port = _split_hostport(cfg.listen)
        self.site = GuardedSite(self._runner, host, port,
                                ssl_context=None if cfg.tls is None else cfg.tls.server(),
                                max_connections=limits.max_connections,
                                header_timeout_s=limits.header_timeout_s)
        await self.site.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.loop_lag.run()))
        self._tasks.append(loop.create_task(self._poll_controller()))
        for d in self.drivers.values():
            self._tasks.append(loop.create_task(d.run()))
        if cfg.join is not None and not cfg.controller and CONTROLLER not in cfg.groups:
            self._tasks.append(loop.create_task(self._discover_controller(cfg.join)))
        if self.backups is not None:
            self._tasks.append(loop.create_task(self.backups.run(self.replicas)))
        log.info("node %d serving on %s (data %s)", cfg.node_id, url(cfg.tls, cfg.listen),
                 cfg.data_dir)
        if cfg.tls is None:
            log.warning("node %d serves plain HTTP (--insecure): peers, clients and the "
                        "cluster secret cross the network unencrypted", cfg.node_id)
        if not cfg.auth:
            log.warning("node %d requires no token: any client that reaches %s can read "
                        "and write", cfg.node_id, cfg.listen)
        if cfg.fault_injection:
            log.warning("node %d has fault injection enabled (/v1/admin/faults)", cfg.node_id)

    def _opener(self, gid: int) -> Callable[[Path], MachineStore]:
        if gid == CONTROLLER:
            return lambda p: ControllerStore(p, history_keep=self.cfg.settings.history_keep)
        return lambda p: StateStore(p, gid=gid, max_sessions=self.cfg.settings.max_sessions)

    async def _poll_controller(self) -> None:
        """Keep the routing view of the configuration fresh (a hint; groups poll too),
        and the controller's list of each led group's voters true to the group."""
        while True:
            raise_if_cancelled()
            await self.configs.refresh()
            with contextlib.suppress(errors.KvraftError):
                await self._refresh_tokens()
            for gid in list(self.replicas):
                with contextlib.suppress(Exception):
                    await self.report_members(gid)
            await asyncio.sleep(max(0.2, self.cfg.settings.shard.poll_interval_s * 5))

    async def _refresh_tokens(self) -> None:
        """Take the controller's token table if it changed (a revoked token is refused
        here within one poll). If the controller cannot be reached, the last table
        stays in force."""
        doc = await self.caller.call(self.controller_addrs(), "GET", "/v1/ctrl/tokens",
                                     params={"since": str(self._tokens_version)},
                                     timeout_s=2.0)
        version = doc.get("version")
        if not isinstance(version, int) or doc.get("unchanged"):
            return
        table = {}
        for t in doc.get("tokens", []):
            if isinstance(t, dict) and isinstance(t.get("hash"), str) and t.get("role") in (
                    "read", "write", "admin"):
                table[t["hash"]] = t["role"]
        self.tokens, self._tokens_version = table, version

    async def _check_restored(self) -> None:
        """A group restored from a backup under a new id (``kvraft restore`` without
        ``--whole-group``) must not still be a member of the live group: that id could
        then come back with a stale log and forgotten votes. Ask the group first."""
        import sqlite3

        for gid in self.cfg.groups:
            db = self.cfg.data_dir / f"group-{gid}" / "raft.db"
            if not db.exists():
                continue
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT v FROM meta WHERE k = 'restored_at'").fetchone()
            except sqlite3.DatabaseError:
                row = None
            finally:
                conn.close()
            if row is None:
                continue
            asks = [a for a in ([self.cfg.join] if self.cfg.join else [])
                    + [a for n, a in sorted(self.cfg.peers.items()) if n != self.cfg.node_id]
                    + list(self.cfg.controller)]
            if not asks:
                raise errors.ServerError(
                    f"group {gid} was restored from a backup: start this node with --join "
                    "HOST:PORT so it can check it is not a member of the live group")
            try:
                doc = await self.caller.call(asks, "GET", "/v1/admin/members",
                                             params={"group": str(gid)}, timeout_s=30.0)
            except errors.KvraftError as e:
                raise errors.ServerError(
                    f"group {gid} was restored from a backup and the live group could not be "
                    f"asked whether node {self.cfg.node_id} is still a member ({e}); refusing "
                    "to start") from None
            restored_at = int(row[0])
            lead = doc.get("leader_address")
            if doc.get("role") != "leader" and isinstance(lead, str):
                with contextlib.suppress(errors.KvraftError):
                    doc = await self.caller.call([lead], "GET", "/v1/admin/members",
                                                 params={"group": str(gid)}, timeout_s=10.0)
            log.info("group %d was restored from a backup at %d: the group lists voters %s, "
                     "learners %s", gid, restored_at, doc.get("voters"), doc.get("learners"))
            me = str(self.cfg.node_id)
            match = (doc.get("progress") or {}).get(me, {}).get("match")
            # Just added as a learner (the operator's next step, possibly before this
            # check ran): the leader expects nothing from it yet. Anything else means
            # the group counts on a log and votes this restored copy does not have.
            fresh_learner = (self.cfg.node_id in doc.get("learners", [])
                             and isinstance(match, int) and match <= restored_at)
            if self.cfg.node_id in doc.get("voters", []) or (
                    self.cfg.node_id in doc.get("learners", []) and not fresh_learner):
                raise errors.ServerError(
                    f"node {self.cfg.node_id} is still a member of group {gid}: a node restored "
                    "from a backup must not come back under a member's id (its log and votes "
                    "are gone). Remove it first (kvraft member remove), or restore a new id")

    async def _discover_controller(self, member: str) -> None:
        """A joining node asks a member where the controller is (GET /v1/shards)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        while True:
            try:
                doc = await self.caller.call([member], "GET", "/v1/shards", timeout_s=3.0)
                ctrl = [a for a in doc.get("controller", []) if isinstance(a, str)]
                if ctrl:
                    self._controller_seed = ctrl
                    log.info("joining through %s: the controller is at %s", member,
                             ",".join(ctrl))
                    return
            except errors.KvraftError as e:
                if loop.time() > deadline:
                    log.warning("could not ask %s where the controller is (%s); trying it "
                                "as a controller member", member, e)
                    return
            await asyncio.sleep(0.5)

    def _learn_controller(self, addrs: list[str]) -> None:
        """The controller told us its members (its own membership may have changed)."""
        good = []
        for a in addrs:
            try:
                _split_hostport(a)
            except ValueError:
                return
            good.append(a)
        if CONTROLLER not in self.replicas and good != self._controller_seed:
            log.info("the controller's members are now %s", ",".join(good))
            self._controller_seed = good

    def controller_addrs(self) -> list[str]:
        """Where the controller is: its members by this node's replica of group 0 (whose
        membership may have changed since start), else the addresses it started with."""
        r = self.replicas.get(CONTROLLER)
        if r is not None and r.core is not None and r.core.conf.voters:
            addrs = [self.addresses[n] for n in sorted(r.core.conf.voters)
                     if n in self.addresses]
            if addrs:
                return addrs
        return self._controller_seed

    def _learn_peer(self, peer: int, addr: str) -> None:
        """A peer this node had no address for connected (we are joining its group)."""
        try:
            _split_hostport(addr)
        except ValueError:
            return
        self.addresses.setdefault(peer, addr)
        if self.transport is not None:
            self.transport.set_peer(peer, self.addresses[peer])

    def _on_conf(self, gid: int, conf: ConfState) -> None:
        """A group's membership changed in its log: learn the members' addresses."""
        for nid, addr in conf.addresses:
            if nid == self.cfg.node_id:
                continue
            if self.addresses.get(nid) != addr:
                self.addresses[nid] = addr
                if self.transport is not None:
                    self.transport.set_peer(nid, addr)
        if self.cfg.node_id in conf.all_nodes():
            self.removed.discard(gid)
        elif conf.voters and gid not in self.removed:
            self.removed.add(gid)
            log.warning("group %d: node %d is not a member any more (voters %s): it serves "
                        "nothing for this group and never campaigns", gid, self.cfg.node_id,
                        sorted(conf.voters))

    def _lock(self) -> None:
        path = self.cfg.data_dir / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise errors.ServerError(
                f"{self.cfg.data_dir} is in use by another kvraft process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def stop(self) -> None:
        for r in self.replicas.values():
            if r.soft.role != Role.LEADER:
                continue
            with contextlib.suppress(Exception):
                if await r.hand_off_leadership():
                    log.info("group %d: leadership handed off before shutdown", r.group_id)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for d in self.drivers.values():
            await d.close()
        await self.caller.close()
        if self.backups is not None:
            self.backups.close()
        await self.client_stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.transport is not None:
            await self.transport.close()
        for r in self.replicas.values():
            await r.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.stopped.set()

    async def wait_failed(self) -> BaseException:
        """Wait until some replica stops on an internal error; returns that error."""
        futs = [r.failed for r in self.replicas.values()]
        done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()

    # --- transport callbacks ---------------------------------------------------------------

    def _deliver(self, group: int, msgs: list[Message]) -> None:
        r = self.replicas.get(group)
        if r is not None:
            r.step(msgs)

    def _unreachable(self, group: int, peer: int) -> None:
        r = self.replicas.get(group)
        if r is not None:
            r.unreachable(peer)

    # --- snapshots and backups -------------------------------------------------------

    async def _stream_snapshot(self, peer: int, group: int, msg: Message,
                               snap: LocalSnapshot) -> None:
        addr = self.addresses.get(peer)
        if addr is None or self.transport is None:
            raise ConnectionError(f"no address for node {peer}")
        if peer in self.transport.faults.blocked_out:
            raise ConnectionError(f"link to node {peer} is blocked")
        await send_snapshot(self.transport, addr, group, msg, snap.path, snap.size, snap.sha256)

    def _spool_dir(self, group: int) -> Path | None:
        r = self.replicas.get(group)
        return None if r is None else r.dir / "snapshots"

    async def _receive_snapshot(self, inc: IncomingSnapshot) -> None:
        await self.replicas[inc.group].receive_snapshot(inc)

    async def _handle_backup(self, request: web.Request) -> web.Response:
        if self.backups is None:
            return web.json_response({"error": "not_configured", "message":
                                      "S3 backups are not configured (--s3-bucket)"}, status=400)
        try:
            replica = self.replicas[int(request.query.get("group", min(self.replicas)))]
        except (KeyError, ValueError):
            return web.json_response({"error": "bad_request", "message": "unknown group"},
                                     status=400)
        try:
            manifest, uploaded = await self.backups.backup(replica)
        except NotLeaderForBackup as e:
            leader = replica.soft.leader
            return web.json_response({"error": "not_leader", "message": str(e),
                                      "leader": self.addresses.get(leader)}, status=409)
        except Exception as e:
            return web.json_response({"error": "backup_failed",
                                      "message": f"{type(e).__name__}: {e}"}, status=503)
        return web.json_response({"manifest": manifest.to_dict(), "uploaded": uploaded,
                                  "bucket": self.cfg.settings.backup.bucket})

    # --- KVService ---------------------------------------------------------------------

    async def _route(self, key: str, num: int) -> Replica:
        """The hosted replica of the group owning ``key``; redirects to another group."""
        if num > self.configs.latest.num:
            self._hint_newer()
        cfg = self.configs.latest
        gid = cfg.range_for(key).gid
        if gid == CONTROLLER or num > cfg.num:  # our view may be old: ask the controller
            with contextlib.suppress(Exception):
                cfg = await asyncio.wait_for(self.configs.refresh(), 1.0)
            gid = cfg.range_for(key).gid
        if gid == CONTROLLER:  # unassigned: no group serves it (or this node's view is new)
            raise errors.WrongGroup(f"no group serves {key!r} at configuration {cfg.num} "
                                    "(the cluster has no data group yet, or this node has "
                                    "not heard from the controller)", num=cfg.num)
        r = self.replicas.get(gid)
        if r is not None and r.core is not None and (  # (no set union per request)
                self.cfg.node_id in r.core.conf.voters or r.core.role == Role.LEADER
                or self.cfg.node_id in r.core.conf.learners):
            return r  # (a leader whose own removal is not committed yet still serves)
        # Not hosted, or hosted by a replica that is not a member (removed, or joining
        # and not added yet): send the client to the members the controller lists.
        members = {n: a for n, a in cfg.members(gid).items() if n != self.cfg.node_id}
        if not members:
            raise errors.WrongGroup(f"no group serves {key!r} yet (configuration {cfg.num})",
                                    num=cfg.num)
        raise errors.WrongGroup(f"group {gid} owns {key!r}; it is not on this node",
                                num=cfg.num, gid=gid, redirect=members[min(members)])

    def _hint_newer(self) -> None:
        for d in self.drivers.values():
            d.wake()

    async def _wrong_group(self, key: str, group_num: int, gid: int) -> errors.WrongGroup:
        """After a hosted group refused ``key``: look for a newer owner to redirect to."""
        for d in self.drivers.values():
            d.wake()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.configs.refresh(), 1.0)
        cfg = self.configs.latest
        owner = cfg.range_for(key).gid
        members = {n: a for n, a in cfg.members(owner).items() if n != self.cfg.node_id}
        hosted = self.replicas.get(owner)
        member_here = (hosted is not None and hosted.core is not None
                       and (self.cfg.node_id in hosted.core.conf.all_nodes()
                            or hosted.core.role == Role.LEADER))
        redirect = members[min(members)] if not member_here and members else None
        return errors.WrongGroup(
            f"group {gid} does not serve {key!r} at configuration {group_num} "
            f"(newest known: {cfg.num}, owner group {owner})",
            num=group_num, gid=owner, redirect=redirect)

    def _kv_store(self, r: Replica) -> StateStore:
        st = r.state
        assert isinstance(st, StateStore)
        return st

    async def get(self, key: str, *, timeout_s: float, num: int = 0,
                  follower: bool = False) -> str | None:
        r = await self._route(key, num)
        await r.read_barrier(timeout_s=timeout_s, follower=follower)
        if r.installing:
            await r.wait_install()
        try:
            return self._kv_store(r).read_owned(key)
        except NotOwned as e:
            raise await self._wrong_group(key, e.num, r.group_id) from None

    async def write(self, cmd: Command, *, timeout_s: float) -> Result:
        r = await self._route(cmd.key, cmd.num)
        res: Result = await r.propose(cmd.encode(), timeout_s=timeout_s)
        if res.status == Status.WRONG_GROUP:
            raise await self._wrong_group(cmd.key, res.num, r.group_id)
        return res

    def status(self) -> dict[str, Any]:
        t = self.transport
        return {
            "node": self.cfg.node_id,
            "address": self.cfg.listen,
            "loop_lag_max_ms": round(self.loop_lag.max_s * 1000, 2),
            "backup": self.backups.status() if self.backups else {"enabled": False},
            "groups": {str(g): self._group_status(g, r) for g, r in self.replicas.items()},
            "config": self.configs.latest.num,
            "transport": None if t is None else {
                "peers": {str(p): {"address": link.addr, "connected": link.connected}
                          for p, link in t.links.items()},
                "frames_sent": t.stats.frames_sent, "frames_received": t.stats.frames_received,
                "msgs_dropped": t.stats.msgs_dropped, "bad_frames": t.stats.bad_frames,
                "faults": t.faults.as_dict(),
            },
        }


async def run_node(config: NodeConfig, stop: asyncio.Event) -> int:
    """Run a node until ``stop`` is set (returns 0) or a replica fails (returns 1)."""
    node = Node(config)
    await node.start()
    failed = asyncio.ensure_future(node.wait_failed())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in (failed, stopper):
            f.cancel()
        with contextlib.suppress(Exception):
            await node.stop()
    if failed in done and not failed.cancelled():
        log.critical("node %d stopping after a replica failure", config.node_id)
        return 1
    return 0
