"""Moving a data group through configurations, and moving range bytes between groups.

The decisions live in the pure :class:`~kvraft.kv.shards.ShardState` (what to pull,
when to serve, when to delete). This module only does what those decisions call for,
and only on the group's leader, reading the *committed* shard state after every step:

- **advance**: when nothing is left to install, fetch configuration ``num + 1`` from
  the controller and propose it (one at a time, in order: never skip a number);
- **pull**: for each range being pulled, ask the previous owner's members for the next
  bounded chunk (keys, then client sessions) and propose it as a CHUNK/SESSIONS entry;
  the cursor in the committed state says where to go on after a restart or a leader
  change, so a chunk proposed twice is ignored by the state machine;
- **gc**: for each outgoing interval, ask the new owner whether it installed it, then
  propose GC steps (bounded deletes) until the record is gone.

Handing data out (``export``) never waits on pulling data in, so groups that swap
ranges cannot deadlock. At most ``max_concurrent_pulls`` pulls run per group, and one
chunk of at most ``chunk_bytes`` is in flight per pull: a range is never held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kvraft import errors
from kvraft.config import ShardSettings
from kvraft.ctrler.config import Configuration, initial_configuration
from kvraft.kv.machine import Status
from kvraft.kv.shardcmd import ShardCommand, ShardOp
from kvraft.kv.shards import KEYS, Outgoing, Pull
from kvraft.raft import Role
from kvraft.runtime.peers import GroupCaller
from kvraft.storage.statedb import StateStore
from kvraft.transport.aio import raise_if_cancelled

if TYPE_CHECKING:
    from kvraft.runtime.replica import Replica

log = logging.getLogger("kvraft.migration")



class ConfigSource:
    """Configurations from the controller, cached (they never change once made)."""

    def __init__(self, caller: GroupCaller, controller: Callable[[], list[str]],
                 cache_size: int = 64) -> None:
        self.caller = caller
        self.controller = controller
        self.latest: Configuration = initial_configuration()
        self._cache: OrderedDict[int, Configuration] = OrderedDict()
        self._size = cache_size
        self.errors = 0
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = -1e9
        self.on_controller: Callable[[list[str]], None] | None = None
        """Called with the controller's members as the controller reports them."""

    def _keep(self, cfg: Configuration) -> None:
        self._cache[cfg.num] = cfg
        self._cache.move_to_end(cfg.num)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        if cfg.num > self.latest.num:
            self.latest = cfg

    async def get(self, num: int, timeout_s: float = 3.0) -> Configuration | None:
        """Configuration ``num`` (negative: the latest); None if not made yet."""
        if num >= 0 and num in self._cache:
            return self._cache[num]
        try:
            doc = await self.caller.call(self.controller(), "GET", "/v1/ctrl/config",
                                         params={"num": str(num)}, timeout_s=timeout_s)
        except errors.NotFound:
            return None
        cfg = Configuration.from_dict(doc["config"])
        self._keep(cfg)
        ctrl = doc.get("controller")
        if (self.on_controller is not None and isinstance(ctrl, list) and ctrl
                and all(isinstance(a, str) for a in ctrl)):
            self.on_controller(ctrl)
        return cfg

    async def refresh(self, timeout_s: float = 3.0, min_interval_s: float = 0.05
                      ) -> Configuration:
        """Ask the controller for its latest configuration. Concurrent callers share one
        query, and a query answered less than ``min_interval_s`` ago is reused, so a
        burst of refused requests does not become a burst of controller reads."""
        async with self._refresh_lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._refreshed_at < min_interval_s:
                return self.latest
            try:
                await self.get(-1, timeout_s)
            except (errors.KvraftError, ValueError, KeyError) as e:
                self.errors += 1
                log.debug("controller query failed: %s", e)
            self._refreshed_at = loop.time()
        return self.latest

    def note(self, cfg: Configuration) -> None:
        self._keep(cfg)


class ShardDriver:
    """Drives one data group's replica on this node (acts only while it leads)."""

    def __init__(self, replica: Replica, configs: ConfigSource, caller: GroupCaller,
                 settings: ShardSettings) -> None:
        self.r = replica
        self.gid = replica.group_id
        self.configs = configs
        self.caller = caller
        self.s = settings
        self._pulls: dict[tuple[int, int, str], asyncio.Task[None]] = {}
        self._gcs: dict[tuple[int, str, str | None], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self.chunks_installed = 0
        self.bytes_installed = 0
        self.bad_chunks = 0
        """Chunks refused for a bad shape or sha256 (and pulled again)."""
        self._copy_next = 0.0
        self.stranded = ""
        """Why this group cannot take its next configuration, if it cannot ever."""

    def store(self) -> StateStore:
        st = self.r.state
        assert isinstance(st, StateStore)
        return st

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.poll_interval_s):
                    await self._wake.wait()
            raise_if_cancelled()
            self._wake.clear()
            if self.r.soft.role != Role.LEADER or self.r.failed.done():
                continue
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("group %d: shard step: %s", self.gid, e)

    async def close(self) -> None:
        tasks = [*self._pulls.values(), *self._gcs.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def step(self) -> None:
        sh = self.store().view()
        if sh is None:
            return
        for og in sh.outgoing:
            k = (og.num, og.start, og.end)
            if k not in self._gcs:
                self._spawn(self._gcs, k, self._gc(og))
        if sh.pulls:
            for p in sh.pulls:
                k = (sh.num, p.range_id, p.start)
                if k not in self._pulls and len(self._pulls) < self.s.max_concurrent_pulls:
                    self._spawn(self._pulls, k, self._pull(sh.num, p))
            return
        nxt = await self.configs.get(sh.num + 1)
        if nxt is None and self.configs.latest.num > sh.num + 1:
            # The controller made it but no longer keeps it (its history is bounded):
            # this group cannot walk through the configurations it missed. Say so loudly.
            if not self.stranded:
                log.error("group %d: configuration %d is no longer kept by the controller "
                          "(latest %d); this group cannot catch up — raise --history-keep "
                          "on the controller or replace the group", self.gid, sh.num + 1,
                          self.configs.latest.num)
            self.stranded = (f"configuration {sh.num + 1} is no longer kept by the "
                             "controller; this group cannot catch up")
            return
        self.stranded = ""
        if nxt is None or not sh.can_take(nxt):
            return  # not made yet, or it gives back a range not confirmed yet (see gc)
        res = await self._propose(ShardCommand(ShardOp.CONFIG, nxt.num, config=nxt.to_dict()))
        if res.status == Status.OK:
            log.info("group %d: configuration %d", self.gid, nxt.num)
            self._wake.set()

    def _spawn(self, table: dict[Any, asyncio.Task[None]], key: Any, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        table[key] = task

        def done(t: asyncio.Task[None]) -> None:
            if table.get(key) is t:
                del table[key]
            if not t.cancelled() and t.exception() is not None:
                log.info("group %d: %s failed: %s", self.gid, key, t.exception())
            self._wake.set()
        task.add_done_callback(done)

    async def _propose(self, cmd: ShardCommand) -> Any:
        return await self.r.propose(cmd.encode(), timeout_s=self.s.step_timeout_s)

    async def _members(self, gid: int, num: int) -> list[str]:
        """Addresses of ``gid``: its members in the newest configuration we know, then
        those of configuration ``num`` (a group that left is only in older ones).

        Called again after every failed call, so a group whose members changed is found.
        """
        out: list[str] = []
        for cfg in (self.configs.latest, await self.configs.get(num)):
            if cfg is not None:
                out += [a for _, a in sorted(cfg.members(gid).items()) if a not in out]
        if not out:
            raise errors.Unavailable(f"no known members of group {gid}")
        return out

    def _leading(self) -> bool:
        return self.r.soft.role == Role.LEADER and not self.r.failed.done()

    # --- pulling --------------------------------------------------------------------------

    async def _pull(self, num: int, p: Pull) -> None:
        """Pull range ``p`` chunk by chunk; each chunk is checked (its shape and its
        sha256) before it is proposed, and a bad one is counted and asked for again."""
        members = await self._members(p.src_gid, num - 1)
        cursor, phase = p.cursor, p.phase
        backoff = self.s.poll_interval_s
        while self._leading():
            req = {"gid": p.src_gid, "num": num, "start": p.start, "end": p.end,
                   "to": self.gid, "after": cursor,
                   "phase": "keys" if phase == KEYS else "sessions",
                   "max_bytes": self.s.chunk_bytes, "limit": self.s.session_chunk}
            try:
                doc = await self.caller.call(members, "POST", "/v1/internal/pull", body=req,
                                             timeout_s=self.s.step_timeout_s)
            except (errors.NotReady, errors.Unavailable, errors.Gone) as e:
                log.debug("group %d: pull of %r from group %d: %s", self.gid, p.start,
                          p.src_gid, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                if not isinstance(e, errors.NotReady):
                    await self.configs.refresh()
                    members = await self._members(p.src_gid, num - 1)
                continue
            backoff = self.s.poll_interval_s
            try:
                cmd, size = _chunk_command(doc, phase, num, p, cursor)
            except (KeyError, ValueError, TypeError) as e:
                self.bad_chunks += 1
                log.warning("group %d: refused a chunk of range %d from group %d: %s",
                            self.gid, p.range_id, p.src_gid, e)
                await asyncio.sleep(backoff)
                continue
            res = await self._propose(cmd)
            if res.status == Status.OK:
                self.chunks_installed += 1
                self.bytes_installed += size
            await self._throttle(size)
            sh = self.store().view()
            cur = None if sh is None or sh.num != num else next(
                (q for q in sh.pulls if q.range_id == p.range_id and q.start == p.start), None)
            if cur is None:
                log.info("group %d: installed range %d [%r, %r) from group %d", self.gid,
                         p.range_id, p.start, p.end, p.src_gid)
                self._wake.set()
                return
            cursor, phase = cur.cursor, cur.phase

    async def _throttle(self, size: int) -> None:
        """Keep this group's copies under ``max_copy_bytes_per_s`` (all pulls together)."""
        rate = self.s.max_copy_bytes_per_s
        if rate <= 0 or size <= 0:
            return
        now = asyncio.get_running_loop().time()
        self._copy_next = max(self._copy_next, now) + size / rate
        if self._copy_next > now:
            await asyncio.sleep(self._copy_next - now)

    # --- deleting what the new owner confirmed -------------------------------------------

    async def _gc(self, og: Outgoing) -> None:
        members = await self._members(og.to_gid, og.num)
        body = {"gid": og.to_gid, "num": og.num, "start": og.start, "end": og.end}
        while self._leading() and not og.gc:
            try:
                doc = await self.caller.call(members, "POST", "/v1/internal/installed",
                                             body=body, timeout_s=self.s.step_timeout_s)
                if doc.get("installed") is True:
                    break
            except errors.KvraftError as e:
                log.debug("group %d: installed? %s", self.gid, e)
                await self.configs.refresh()
                members = await self._members(og.to_gid, og.num)
            await asyncio.sleep(self.s.poll_interval_s * 2)
        while self._leading():
            await self._propose(ShardCommand(ShardOp.GC, og.num, start=og.start, end=og.end,
                                             limit=self.s.gc_batch_keys))
            sh = self.store().view()
            if sh is None or sh.outgoing_exact(og.num, (og.start, og.end)) is None:
                log.info("group %d: deleted [%r, %r) after group %d installed it", self.gid,
                         og.start, og.end, og.to_gid)
                return


def members_list(members: dict[int, str]) -> Sequence[str]:
    return [a for _, a in sorted(members.items())]


def chunk_digest(body: Any) -> str:
    """The sha256 of a chunk's ``items`` or ``sessions`` as JSON (what both ends hash)."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _chunk_command(doc: dict[str, Any], phase: int, num: int, p: Pull,
                   cursor: str | None) -> tuple[ShardCommand, int]:
    """The command installing one pulled chunk; raises ValueError (or KeyError,
    TypeError) for a chunk that is malformed or fails its sha256."""
    name = "items" if phase == KEYS else "sessions"
    body = doc[name]
    if not isinstance(body, list) or not isinstance(doc.get("last"), bool):
        raise ValueError(f"{name} must be a list and last a boolean")
    if doc.get("sha256") != chunk_digest(body):
        raise ValueError("sha256 mismatch")
    if phase == KEYS:
        items = tuple((_text(k), _text(v)) for k, v in body)
        return ShardCommand(ShardOp.CHUNK, num, p.range_id, p.start, p.end, cursor=cursor,
                            next_cursor=items[-1][0] if items else cursor, last=doc["last"],
                            items=items), sum(len(k) + len(v) for k, v in items)
    sessions = tuple((_text(c), _int(a), tuple((_int(s), _int(st), bool(ex), _text(k))
                                               for s, st, ex, k in rs))
                     for c, a, rs in body)
    nxt = doc.get("next_cursor")
    if nxt is not None and not isinstance(nxt, str):
        raise ValueError("next_cursor must be a string")
    return ShardCommand(ShardOp.SESSIONS, num, p.range_id, p.start, p.end, cursor=cursor,
                        next_cursor=nxt, last=doc["last"], sessions=sessions), 0


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v

