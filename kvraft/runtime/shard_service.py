"""The node's side of the sharded HTTP routes (``kvraft.transport.shard_api``).

Controller calls go to this node's replica of group 0 (the leader answers; a follower
redirects); range exports are served by *any* replica of the source group that has
frozen the range (its data can no longer change, so every such replica holds the same
copy); ``installed`` is answered from a replica's committed state, which is a prefix of
the group's committed log, so a "yes" is never premature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvraft import errors
from kvraft.ctrler.config import Configuration
from kvraft.ctrler.machine import (
    ROLES,
    TOKEN_OPS,
    CtrlCommand,
    CtrlOp,
    CtrlResult,
    valid_token_name,
)
from kvraft.ctrler.rebalance import RangeSize, plan
from kvraft.runtime.migration import chunk_digest
from kvraft.storage.ctrlstate import ControllerStore
from kvraft.storage.statedb import NotOwned, StateStore
from kvraft.transport.shard_api import MAX_ID, opt_str, req_int

if TYPE_CHECKING:
    from kvraft.runtime.migration import ConfigSource
    from kvraft.runtime.node import NodeConfig
    from kvraft.runtime.peers import GroupCaller
    from kvraft.runtime.replica import Replica

MAX_EXPORT_BYTES = 4 << 20
MAX_EXPORT_SESSIONS = 5000

_OPS = {"join": CtrlOp.JOIN, "leave": CtrlOp.LEAVE, "move": CtrlOp.MOVE,
        "split": CtrlOp.SPLIT, "merge": CtrlOp.MERGE, "members": CtrlOp.MEMBERS,
        "token_put": CtrlOp.TOKEN_PUT, "token_revoke": CtrlOp.TOKEN_REVOKE}
_ROLE_NUMBERS = {name: num for num, name in ROLES.items()}


class ShardServiceMixin:
    cfg: NodeConfig
    replicas: dict[int, Replica]
    configs: ConfigSource
    caller: GroupCaller
    controller_addrs: Callable[[], list[str]]

    # --- helpers -------------------------------------------------------------------------

    def _ctrl(self) -> tuple[Replica, ControllerStore]:
        r = self.replicas.get(0)
        if r is None:
            raise errors.NotFound("this node does not host the controller (group 0); "
                                  f"ask one of {','.join(self.controller_addrs())}")
        st = r.state
        assert isinstance(st, ControllerStore)
        return r, st

    def _data(self, gid: int) -> StateStore:
        r = self.replicas.get(gid)
        if r is None or gid == 0:
            raise errors.NotFound(f"group {gid} is not hosted on this node")
        st = r.state
        assert isinstance(st, StateStore)
        return st

    def _group_status(self, gid: int, r: Replica) -> dict[str, Any]:
        doc = r.status()
        st = getattr(r, "state", None)
        if isinstance(st, StateStore) and r.core is not None and not r.installing:
            view = st.view()
            if view is not None:
                doc["shards"] = view.view()
                driver = getattr(self, "drivers", {}).get(gid)
                if driver is not None and driver.stranded:
                    doc["shards"]["error"] = driver.stranded
        elif isinstance(st, ControllerStore):
            doc["controller"] = {"config": st.latest().num}
        return doc

    # --- client routes ---------------------------------------------------------------------

    async def shard_map(self, *, fresh: bool) -> dict[str, Any]:
        cfg = await self.configs.refresh() if fresh else self.configs.latest
        return {"config": cfg.to_dict(), "controller": self.controller_addrs(),
                "node": self.cfg.node_id, "groups_here": sorted(self.replicas)}

    async def scan(self, start: str, end: str | None, limit: int, *, timeout_s: float,
                   num: int, follower: bool = False) -> dict[str, Any]:
        r = await self._route(start, num)  # type: ignore[attr-defined]
        await r.read_barrier(timeout_s=timeout_s, follower=follower)
        try:
            items, range_end, gnum = await r.read_in_thread(
                lambda: self._data(r.group_id).scan_owned(start, end, limit))
        except NotOwned as e:
            raise await self._wrong_group(start, e.num, r.group_id) from None  # type: ignore[attr-defined]
        return {"items": [list(kv) for kv in items], "range_end": range_end, "num": gnum,
                "group": r.group_id}

    # --- controller ------------------------------------------------------------------------

    async def ctrl_query(self, num: int, *, timeout_s: float) -> dict[str, Any]:
        r, st = self._ctrl()
        await r.read_barrier(timeout_s=timeout_s)
        st = self._ctrl()[1]
        cfg = st.query(num)
        if cfg is None:
            raise errors.NotFound(f"configuration {num} does not exist (latest is "
                                  f"{st.latest().num})")
        self.configs.note(cfg)
        return {"config": cfg.to_dict(), "controller": self.controller_addrs()}

    async def ctrl_tokens(self, since: int, *, timeout_s: float) -> dict[str, Any]:
        """The token table (names, roles, hashes) and its version, from the controller's
        leader; only the version if it is still ``since``."""
        r, _ = self._ctrl()
        await r.read_barrier(timeout_s=timeout_s)
        version, tokens = self._ctrl()[1].tokens()
        if version == since:
            return {"version": version, "unchanged": True}
        return {"version": version, "tokens": [
            {"name": n, "role": ROLES[role], "hash": h} for n, (h, role) in sorted(tokens.items())]}

    async def _latest(self, timeout_s: float) -> Configuration:
        r, _ = self._ctrl()
        await r.read_barrier(timeout_s=timeout_s)
        return self._ctrl()[1].latest()

    def _parse_command(self, doc: dict[str, Any], latest: Configuration) -> CtrlCommand:
        op = _OPS.get(str(doc.get("op")))
        if op is None:
            raise errors.InvalidArgument(f"op must be one of {', '.join(_OPS)}")
        if op in (CtrlOp.JOIN, CtrlOp.MEMBERS):
            members = doc.get("members")
            if not isinstance(members, dict) or not members:
                raise errors.InvalidArgument('join needs "members": {"node_id": "host:port"}')
            try:
                ms = tuple(sorted((int(k), str(v)) for k, v in members.items()))
            except ValueError:
                raise errors.InvalidArgument("member ids must be integers") from None
            for nid, a in ms:
                host, sep, port = a.rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise errors.InvalidArgument(f"bad member address {a!r}")
                if not 1 <= nid <= MAX_ID:
                    raise errors.InvalidArgument(f"bad member id {nid}")
            return CtrlCommand(op, gid=req_int(doc, "gid", 1), members=ms)
        if op == CtrlOp.LEAVE:
            return CtrlCommand(op, gid=req_int(doc, "gid", 1))
        if op in TOKEN_OPS:
            name = opt_str(doc, "name")
            if name is None or not valid_token_name(name):
                raise errors.InvalidArgument('a token needs "name": 1 to 64 of A-Z a-z 0-9 _ . -')
            if op == CtrlOp.TOKEN_REVOKE:
                return CtrlCommand(op, key=name)
            role = _ROLE_NUMBERS.get(str(doc.get("role")))
            h = opt_str(doc, "hash")
            if role is None or h is None:
                raise errors.InvalidArgument('token_put needs "hash" (the SHA-256 of the '
                                             'token, hex) and "role": read, write or admin')
            return CtrlCommand(op, key=name, token_hash=h.lower(), role=role)
        if op == CtrlOp.MOVE:
            key = opt_str(doc, "key")
            if key is not None:
                rng = latest.range_for(key)
                return CtrlCommand(op, gid=req_int(doc, "to", 1), range_id=rng.id,
                                   version=rng.version)
            return CtrlCommand(op, gid=req_int(doc, "to", 1),
                               range_id=req_int(doc, "range", 1),
                               version=req_int(doc, "version", 0) if "version" in doc else 0)
        key = opt_str(doc, "key")
        if key is None:
            raise errors.InvalidArgument(f"{doc.get('op')} needs \"key\"")
        return CtrlCommand(op, key=key)

    async def _propose_ctrl(self, cmd: CtrlCommand, timeout_s: float) -> CtrlResult:
        r, _ = self._ctrl()
        res: CtrlResult = await r.propose(cmd.encode(), timeout_s=timeout_s)
        return res

    async def ctrl_command(self, doc: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        latest = await self._latest(timeout_s)
        cmd = self._parse_command(doc, latest)
        res = await self._propose_ctrl(cmd, timeout_s)
        if not res.ok:
            raise errors.InvalidArgument(res.error)
        cfg = self._ctrl()[1].latest()
        self.configs.note(cfg)
        return {"ok": True, "num": res.num, "changed": res.changed, "config": cfg.to_dict()}

    async def _sizes(self, cfg: Configuration, timeout_s: float) -> dict[int, RangeSize]:
        sizes: dict[int, RangeSize] = {}
        for gid in cfg.group_ids():
            members = [a for _, a in sorted(cfg.members(gid).items())]
            try:
                doc = await self.caller.call(members, "GET", "/v1/internal/stats",
                                             params={"gid": str(gid)}, timeout_s=timeout_s)
            except errors.KvraftError:
                continue
            for row in doc.get("ranges", []):
                sizes[int(row["range"])] = RangeSize(int(row["keys"]), int(row["bytes"]))
        return sizes

    async def ctrl_plan(self, apply: bool, *, timeout_s: float) -> dict[str, Any]:
        cfg = await self._latest(timeout_s)
        p = plan(cfg, await self._sizes(cfg, timeout_s))
        out: dict[str, Any] = {"plan": p.to_dict(), "applied": False, "num": cfg.num}
        if apply and p.moves:
            res = await self._propose_ctrl(CtrlCommand(CtrlOp.APPLY_PLAN, moves=p.as_moves()),
                                           timeout_s)
            if not res.ok:
                raise errors.InvalidArgument(res.error)
            out.update(applied=True, num=res.num, dropped=res.dropped)
            self.configs.note(self._ctrl()[1].latest())
        return out

    # --- between groups --------------------------------------------------------------------

    async def export_range(self, doc: dict[str, Any]) -> dict[str, Any]:
        st = self._data(req_int(doc, "gid", 1))
        num, to = req_int(doc, "num", 1), req_int(doc, "to", 1)
        iv = (opt_str(doc, "start") or "", opt_str(doc, "end"))
        after = opt_str(doc, "after")
        try:
            loop = asyncio.get_running_loop()
            if doc.get("phase") == "sessions":
                limit = min(req_int(doc, "limit", 1), MAX_EXPORT_SESSIONS)
                sc = await loop.run_in_executor(None, st.export_sessions, num, iv, to, after,
                                                limit)
                sessions = [[c, a, [list(x) for x in rs]] for c, a, rs in sc.sessions]
                return {"sessions": sessions, "sha256": chunk_digest(sessions),
                        "next_cursor": sc.next_cursor, "last": sc.last}
            max_bytes = min(req_int(doc, "max_bytes", 1), MAX_EXPORT_BYTES)
            # read off the event loop: a chunk is up to max_bytes of rows
            kc = await loop.run_in_executor(None, st.export_keys, num, iv, to, after, max_bytes)
        except NotOwned as e:
            raise errors.NotReady(f"configuration {num} not taken here yet (at {e.num})") from None
        items = [list(kv) for kv in kc.items]
        return {"items": items, "sha256": chunk_digest(items), "last": kc.last}

    async def range_installed(self, doc: dict[str, Any]) -> dict[str, Any]:
        st = self._data(req_int(doc, "gid", 1))
        num = req_int(doc, "num", 1)
        iv = (opt_str(doc, "start") or "", opt_str(doc, "end"))
        view = st.view()
        return {"installed": view is not None and view.installed(num, iv)}

    async def range_stats(self, gid: int) -> dict[str, Any]:
        st = self._data(gid)
        return {"gid": gid, "ranges": await asyncio.get_running_loop().run_in_executor(
            None, st.range_stats)}
