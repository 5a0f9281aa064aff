"""One replica of one Raft group: the Ready loop that drives a RaftCore.

The loop follows the ``Ready`` contract (see ``kvraft.raft.types.Ready``):

1. persist hard state + new entries in raft.db — one transaction per Ready, on this
   replica's log-I/O thread (group commit: every proposal that arrived while the
   previous batch was being written goes into the next one). A leader sends its
   appends before its own write completes (Raft thesis 10.2.1); every other message
   waits for the write;
2. send the remaining messages;
3. hand the committed entries (durable locally by now) to the apply task, which
   applies them to state.db (one transaction with the applied index) on the
   state-I/O thread, answers the proposals they complete and releases reads — while
   the Ready loop already persists the next batch;
4. ``advance``; reads whose read index is applied are served.

All RaftCore calls happen on the event loop; the I/O threads only see immutable data.
Proposals wait on futures keyed by log index and fail fast with ``NotLeader`` when
leadership is lost (outcome unknown: the entry may still commit). An internal
invariant violation stops the replica and is reported through ``failed``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kvraft import errors
from kvraft.config import ReplicaSettings
from kvraft.raft import (
    NONE,
    Config,
    ConfState,
    Entry,
    InitialState,
    InvariantViolation,
    Message,
    MsgType,
    ProposalDropped,
    RaftCore,
    Ready,
    Role,
    SoftState,
)
from kvraft.raft import NotLeader as CoreNotLeader
from kvraft.raft.types import early_messages
from kvraft.runtime.lease import Lease, lease_seconds
from kvraft.runtime.snapshotter import (
    InstallItem,
    Snapshotter,
    StreamSnapshot,
    recover_state,
)
from kvraft.storage.ports import MachineStore, OpenStore
from kvraft.storage.raftlog import RaftLogStore
from kvraft.storage.snapshots import LocalSnapshot
from kvraft.transport.snapshot_stream import IncomingSnapshot

log = logging.getLogger("kvraft.replica")
T = TypeVar("T")



def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _with_timeout(fut: asyncio.Future[T], timeout_s: float) -> T:
    """Await ``fut`` for at most ``timeout_s`` (cheaper than wait_for: no extra task)."""
    handle = asyncio.get_running_loop().call_later(timeout_s, _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()


class _LogExecutor(ThreadPoolExecutor):
    """The log-I/O thread. Every job holds ``lock`` while it runs, so the event loop may
    run a short write itself, on the same connection, whenever the lock is free."""

    def __init__(self, name: str) -> None:
        super().__init__(1, thread_name_prefix=name)
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def locked() -> T:
            with self.lock:
                return fn(*args, **kwargs)
        return super().submit(locked)


class _Checkpoint:
    """An apply-queue item: checkpoint state.db's WAL between two applies."""


_CHECKPOINT = _Checkpoint()


class Replica:
    """Runs one Raft group's replica and the state machine behind ``open_store``.

    The replica knows nothing of what the machine does: it applies committed entries
    through :class:`~kvraft.storage.ports.MachineStore` and answers each proposal with
    the machine's result for its entry. The data groups and the controller share it.
    """

    def __init__(self, *, node_id: int, group_id: int, conf: ConfState, data_dir: Path,
                 send: Callable[[int, list[Message]], None], settings: ReplicaSettings,
                 address_of: Callable[[int], str | None], open_store: OpenStore,
                 stream_snapshot: StreamSnapshot | None = None,
                 on_conf: Callable[[int, ConfState], None] | None = None) -> None:
        self.on_conf = on_conf
        """Called with (group, membership) whenever the membership in the log changes."""
        self._seen_conf: ConfState | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        """Woken after the next Ready is handled (the core's state may have changed)."""
        self.restored_at: int | None = None
        """Restored from a backup at this index under an id that is no member yet."""
        self.open_store = open_store
        self.node_id = node_id
        self.group_id = group_id
        self.initial_conf = conf
        self.dir = data_dir
        self._send = send
        self.settings = settings
        self.address_of = address_of
        self.core: RaftCore | None = None
        self._wake = asyncio.Event()
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[int, asyncio.Future[None]] = {}
        self._parked_reads: list[tuple[int, int]] = []
        self._read_ctx = random.SystemRandom().getrandbits(60)
        """Read ctxs start at random: a restarted follower must not take the answer to a
        read its previous run forwarded (same term, same leader) for one of its own."""
        self._tasks: list[asyncio.Task[None]] = []
        self.log_io = _LogExecutor(f"raftlog-g{group_id}")
        self._sm_io = ThreadPoolExecutor(1, thread_name_prefix=f"state-g{group_id}")
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.soft = SoftState(NONE, Role.FOLLOWER, 0)
        self.ready_batches = 0
        self.applied_index = 0
        self._apply_items: deque[list[Entry] | InstallItem | _Checkpoint] = deque()
        self._apply_wake = asyncio.Event()
        self._applying = False
        self._since_checkpoint = 0
        self.entries_persisted = 0
        self.inline_saves = 0
        """Writes to raft.db made on the event loop (see ``_save_inline``)."""
        self.snapshotter = Snapshotter(self, settings.snapshot, stream_snapshot)
        self.lease = (Lease(lease_seconds(settings.tick_ms, settings.election_ticks))
                      if settings.lease_reads else None)
        """With ``lease_reads``: the leader lease (see ``kvraft.runtime.lease``)."""
        self._read_started: dict[int, tuple[float, int]] = {}
        """With a lease: read ctx -> (the lease clock when it was registered, term)."""
        self.follower_reads = 0
        """Reads this replica served as a follower (with a read index from its leader)."""
        self._fwd_next: list[asyncio.Future[None]] | None = None
        """Follower reads waiting for the next read index asked of the leader."""
        self._fwd_inflight = 0
        """The ctx of the read index asked of the leader and not answered yet (0: none)."""
        self._fwd_sent_at = 0.0
        self._fwd_retry_s = 2 * settings.heartbeat_ticks * settings.tick_ms / 1000
        """A read index unanswered this long (a lost message) no longer holds up the
        next one (the core drops it after an election timeout)."""
        self._install_done: asyncio.Future[None] | None = None
        """Set while a snapshot from the leader replaces state.db (see ``wait_install``)."""
        self._thread_reads = 0
        self._thread_reads_idle: asyncio.Future[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self.raftlog, self.state = await loop.run_in_executor(self.log_io, self._open)
        loaded = await loop.run_in_executor(self.log_io, self.raftlog.load)
        self.state = await loop.run_in_executor(self._sm_io, recover_state, self.dir, loaded,
                                                self.state, self.open_store)
        applied, _ = self.state.applied()
        conf = loaded.conf or self.state.conf() or self.initial_conf
        if loaded.conf is None:
            await loop.run_in_executor(self.log_io, self.raftlog.set_conf, conf)
        if self.state.conf() is None:
            await loop.run_in_executor(self._sm_io, self.state.set_conf, conf)
        last = loaded.entries[-1].index if loaded.entries else loaded.log_start[0]
        if applied > last:
            raise errors.ServerError(
                f"{self.dir}: state.db applied index {applied} is ahead of the log ({last}); "
                "raft.db is missing or truncated — restore this replica from a snapshot")
        s = self.settings
        cfg = Config(id=self.node_id, election_ticks=s.election_ticks,
                     heartbeat_ticks=s.heartbeat_ticks, max_msg_bytes=s.max_msg_bytes,
                     max_inflight_msgs=s.max_inflight_msgs, vote_lease=True)
        self.core = RaftCore(cfg, random.Random(), InitialState(
            conf=conf, hard_state=loaded.hard_state, snapshot=loaded.snapshot,
            entries=loaded.entries, applied=applied, log_start=loaded.log_start))
        self.applied_index = applied
        self.restored_at = await loop.run_in_executor(self.log_io, self.raftlog.restored_at)
        self._seen_conf = self.core.conf
        if self.on_conf is not None:
            self.on_conf(self.group_id, self.core.conf)
        self.snapshotter.last_index = loaded.snapshot.index if loaded.snapshot else 0
        self._tasks = [loop.create_task(self._ready_loop()), loop.create_task(self._ticker()),
                       loop.create_task(self._guard(self._apply_loop()))]
        log.info("group %d replica %d started: term %d, log %d..%d, applied %d",
                 self.group_id, self.node_id, loaded.hard_state.term,
                 self.core.log.first_index(), last, applied)

    def _open(self) -> tuple[RaftLogStore, MachineStore]:
        return (RaftLogStore(self.dir / "raft.db", node_id=self.node_id, group_id=self.group_id),
                self.open_store(self.dir / "state.db"))

    async def hand_off_leadership(self, timeout_s: float = 2.0) -> bool:
        """If leading, transfer leadership to the most caught-up voter and wait for it.

        Used on clean shutdown so clients see a new leader at once instead of waiting
        for an election timeout. Returns True if this replica no longer leads.
        """
        core = self.core
        if core is None or core.role != Role.LEADER or self.failed.done():
            return True
        peers = [(pr.match, p) for p, pr in core.prs.items()
                 if p != self.node_id and p in core.conf.voters]
        if not peers:
            return False
        target = max(peers)[1]
        try:
            core.transfer_leadership(target)
        except (CoreNotLeader, ValueError):
            return core.role != Role.LEADER
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while core.role == Role.LEADER and asyncio.get_running_loop().time() < deadline:
            await self._after_ready(deadline)
        return core.role != Role.LEADER

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await self.snapshotter.close()
        self._fail_all(errors.Unavailable("replica is shutting down"))
        loop = asyncio.get_running_loop()
        if self.core is not None:
            await loop.run_in_executor(self.log_io, self.raftlog.close)
            await loop.run_in_executor(self._sm_io, self.state.close)
        self.log_io.shutdown(wait=True)
        self._sm_io.shutdown(wait=True)

    # --- inputs ------------------------------------------------------------------------

    def step(self, msgs: list[Message]) -> None:
        core = self.core
        if core is None or self.failed.done():
            return
        lease = self.lease
        try:
            for m in msgs:
                if (lease is not None and m.type == MsgType.READ_INDEX
                        and self._leased_read_index(core, lease, m)):
                    continue
                core.step(m)
        except InvariantViolation as e:
            self._fatal(e)
            return
        self._wake.set()

    def _leased_read_index(self, core: RaftCore, lease: Lease, m: Message) -> bool:
        """A follower asks for a read index: under the lease, answer at once with the
        commit index (the argument of a leased read holds for it as for our own: the
        follower's read began before we read the clock)."""
        index = core.log.committed  # (taken before the clock: see the lease module)
        now = lease.now()
        if not core.lease_may_hold() or not lease.valid(core.term, now):
            return False
        if not core.answer_read_index(m, index):
            return False
        lease.reads += 1
        if lease.wants_renewal(now):
            lease.renewing = self._register_read(core, now)
        return True

    def _fatal(self, e: BaseException) -> None:
        """An internal invariant broke: stop this replica loudly, serve nothing more."""
        log.critical("group %d replica %d stopped: %s", self.group_id, self.node_id, e,
                     exc_info=e)
        self._fail_all(errors.Unavailable(f"replica failed: {e}"))
        if not self.failed.done():
            self.failed.set_result(e)
        for t in self._tasks:
            t.cancel()

    def wake(self) -> None:
        self._wake.set()

    def enqueue_install(self, item: InstallItem) -> None:
        self._apply_items.append(item)
        self._apply_wake.set()

    async def receive_snapshot(self, inc: IncomingSnapshot) -> None:
        await self.snapshotter.receive(inc)

    async def snapshot_for_backup(self) -> LocalSnapshot:
        return await self.snapshotter.latest_or_take()

    def unreachable(self, peer: int) -> None:
        if self.core is not None:
            self.core.report_unreachable(peer)

    async def _ticker(self) -> None:
        """Tick the core every ``tick_ms``, never two ticks less than ``tick_ms`` apart
        by the monotonic clock: after a stall the missed ticks are dropped, not run in a
        burst. Ticks so run slow, never fast, which is what leases need: a follower
        that hears from its leader votes no sooner than ``election_ticks - 1`` intervals
        later (``kvraft.runtime.lease``)."""
        interval = self.settings.tick_ms / 1000
        last = time.monotonic()
        while True:
            wait = last + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # (timers may fire a little early: check again)
            last = time.monotonic()
            assert self.core is not None
            self.core.tick()
            self._wake.set()

    # --- client operations -----------------------------------------------------------

    def _not_leader(self, leader: int) -> errors.NotLeader:
        addr = self.address_of(leader) if leader != NONE else None
        return errors.NotLeader(f"node {self.node_id} is not the leader of group "
                                f"{self.group_id}", addr)

    async def propose(self, data: bytes, *, timeout_s: float) -> Any:
        """Replicate and apply ``data``; raises NotLeader, OutcomeUnknown or Unavailable."""
        core = self._ready_core()
        return await self._replicate(lambda: core.propose(data), timeout_s, "write")

    async def _replicate(self, append: Callable[[], tuple[int, int]], timeout_s: float,
                         what: str) -> Any:
        """Append an entry (``append`` returns its index and term) and wait until it is
        applied here; the core's refusals become kvraft errors."""
        try:
            index, term = append()
        except CoreNotLeader as e:
            raise self._not_leader(e.leader) from None
        except ProposalDropped as e:
            raise errors.Unavailable(str(e)) from None
        except ValueError as e:
            raise errors.InvalidArgument(str(e)) from None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (term, fut)
        self._wake.set()
        try:
            return await _with_timeout(fut, timeout_s)
        except TimeoutError:
            self._proposals.pop(index, None)
            raise errors.OutcomeUnknown(f"{what} not committed within {timeout_s:.1f}s") from None

    async def read_barrier(self, *, timeout_s: float, follower: bool = False) -> None:
        """Return once a linearizable read may be served from state.db: after a quorum
        round (ReadIndex), or under the leader lease when ``lease_reads`` is on.

        ``follower``: a follower serves the read too (a follower read). It asks its
        leader for a read index (the leader confirms its leadership as for its own
        reads: a quorum round, or its lease) and returns once it has applied that far:
        every write acknowledged before the read began is then in state.db here. Raises
        NotLeader (naming the leader) when there is no leader to ask or the leader
        refused. Read state.db after ``wait_install`` (a follower installs snapshots)."""
        core = self._ready_core()
        if follower and core.role != Role.LEADER:
            await self._follower_read(core, timeout_s)
            return
        lease = self.lease
        if lease is not None and core.lease_may_hold():
            index = core.log.committed  # (taken before the clock: see the lease module)
            now = lease.now()
            if lease.valid(core.term, now):
                if lease.wants_renewal(now):
                    lease.renewing = self._register_read(core, now)
                    self._wake.set()
                lease.reads += 1
                if self.applied_index < index:
                    self._read_ctx += 1
                    heapq.heappush(self._parked_reads, (index, self._read_ctx))
                    await self._await_read(self._read_ctx, timeout_s)
                return
        try:
            ctx = self._register_read(core, lease.now() if lease is not None else 0.0)
        except CoreNotLeader as e:
            raise self._not_leader(e.leader) from None
        self._wake.set()
        await self._await_read(ctx, timeout_s)

    def _register_read(self, core: RaftCore, now: float) -> int:
        """Start a ReadIndex round for a new read ctx (raises the core's NotLeader)."""
        self._read_ctx += 1
        ctx = self._read_ctx
        core.read_index(ctx)
        if self.lease is not None:
            self._read_started[ctx] = (now, core.term)
        return ctx

    async def _follower_read(self, core: RaftCore, timeout_s: float) -> None:
        """One read index at a time is asked of the leader: the reads that arrive while
        it is out wait for the next one, which goes as soon as the leader answers. The
        leader then does one round and sends one answer for many reads (each read still
        waits for an index asked after it began)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._fwd_next is None:
            self._fwd_next = []
        self._fwd_next.append(fut)
        if (self._fwd_inflight == 0
                or asyncio.get_running_loop().time() - self._fwd_sent_at > self._fwd_retry_s):
            self._forward_reads(core)
        try:
            await _with_timeout(fut, timeout_s)
        except TimeoutError:
            raise errors.Unavailable(f"read not confirmed within {timeout_s:.1f}s") from None
        self.follower_reads += 1

    def _forward_reads(self, core: RaftCore) -> None:
        """Ask the leader for a read index for every read waiting for one."""
        waiters, self._fwd_next = self._fwd_next, None
        waiters = [w for w in waiters or () if not w.done()]  # (timed out meanwhile)
        if not waiters:
            return
        self._read_ctx += 1
        ctx = self._read_ctx
        try:
            core.read_index(ctx, forward=True)
        except CoreNotLeader as e:
            err = self._not_leader(e.leader)
            for w in waiters:
                if not w.done():
                    w.set_exception(err)
            return
        self._fwd_inflight = ctx
        self._fwd_sent_at = asyncio.get_running_loop().time()
        batch: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = batch  # resolved once applied, or failed when dropped

        def fan_out(b: asyncio.Future[None]) -> None:
            exc = (errors.Unavailable("read cancelled") if b.cancelled() else b.exception())
            for w in waiters:
                if not w.done():
                    if exc is None:
                        w.set_result(None)
                    else:
                        w.set_exception(exc)

        batch.add_done_callback(fan_out)
        self._wake.set()

    def _forwarded_answered(self, core: RaftCore) -> None:
        """The read index in flight was answered (or dropped): ask for the next one."""
        self._fwd_inflight = 0
        if self._fwd_next:
            self._forward_reads(core)

    @property
    def installing(self) -> bool:
        """Whether a snapshot install is replacing state.db now: read it only after
        ``wait_install`` (a follower installs snapshots; its reads must not overlap)."""
        return self._install_done is not None

    async def wait_install(self) -> None:
        """Wait until no snapshot install is running. A read on the event loop that
        starts after this returns, with no await in between, never overlaps one."""
        while self._install_done is not None:
            await asyncio.shield(self._install_done)

    async def read_in_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a read of state.db) on a worker thread, never during a snapshot
        install: the install waits for it, and it waits for the install."""
        await self.wait_install()
        self._thread_reads += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        finally:
            self._thread_reads -= 1
            idle = self._thread_reads_idle
            if not self._thread_reads and idle is not None and not idle.done():
                idle.set_result(None)

    async def _await_read(self, ctx: int, timeout_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            await _with_timeout(fut, timeout_s)
        except TimeoutError:
            self._reads.pop(ctx, None)
            raise errors.Unavailable(f"read not confirmed within {timeout_s:.1f}s") from None

    # --- membership -------------------------------------------------------------------

    def committed_conf(self) -> ConfState:
        """The newest membership that is committed (the log may hold a newer one)."""
        core = self._ready_core()
        return core.conf_at(core.log.committed)

    async def change_conf(self, change: Callable[[ConfState], ConfState], *,
                          timeout_s: float) -> ConfState:
        """Propose ``change(current membership)`` and wait until it is applied here.

        Raises NotLeader, InvalidArgument (a change the rules refuse), Unavailable (one
        must wait: another change is in flight) or OutcomeUnknown.
        """
        core = self._ready_core()
        if core.role != Role.LEADER:
            raise self._not_leader(core.leader)
        new = change(core.conf)
        if new == core.conf:
            return new
        await self._replicate(lambda: core.propose_conf(new), timeout_s, "membership change")
        log.info("group %d: membership is now voters %s learners %s (applied %d)",
                 self.group_id, sorted(new.voters), sorted(new.learners), self.applied_index)
        return new

    async def transfer_leadership(self, target: int, *, timeout_s: float) -> None:
        """Hand leadership to voter ``target`` and wait until it leads (or time out)."""
        core = self._ready_core()
        try:
            core.transfer_leadership(target)
        except CoreNotLeader as e:
            raise self._not_leader(e.leader) from None
        except ValueError as e:
            raise errors.InvalidArgument(str(e)) from None
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (core.leader == target and core.role != Role.LEADER):
            if core.role == Role.LEADER and core.transferee == NONE:
                raise errors.Unavailable(f"the transfer to node {target} was abandoned (it did "
                                         "not catch up within an election timeout)")
            if loop.time() > deadline:
                raise errors.Unavailable(f"node {target} did not take over within "
                                         f"{timeout_s:.1f}s (it may be lagging or down)")
            await self._after_ready(deadline)

    async def wait_caught_up(self, peer: int, *, timeout_s: float) -> int:
        """Wait until ``peer`` holds every entry committed when the wait began.

        Returns the index it reached. Raises NotLeader if leadership moves, Unavailable
        on timeout (the learner is too slow or unreachable).
        """
        core = self._ready_core()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        target = core.log.committed
        while True:
            if core.role != Role.LEADER:
                raise self._not_leader(core.leader)
            pr = core.prs.get(peer)
            if pr is None:
                raise errors.InvalidArgument(f"node {peer} is not a member of group "
                                             f"{self.group_id}")
            if pr.match >= target:
                return pr.match
            if loop.time() > deadline:
                raise errors.Unavailable(
                    f"node {peer} has not caught up within {timeout_s:.1f}s (at {pr.match} "
                    f"of {target}); it stays a learner")
            await self._after_ready(deadline)

    async def _after_ready(self, deadline: float) -> None:
        """Wait until the next Ready has been handled (every change of the core's role,
        leader or peers' progress comes out of one), or until ``deadline``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._ready_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            pass
        finally:
            if fut in self._ready_waiters:
                self._ready_waiters.remove(fut)

    def _ready_core(self) -> RaftCore:
        if self.core is None or self.failed.done():
            raise errors.Unavailable(f"replica of group {self.group_id} is not running")
        return self.core

    # --- the Ready loop ---------------------------------------------------------------

    async def _ready_loop(self) -> None:
        core = self.core
        assert core is not None
        await self._guard(self._ready_steps(core))

    async def _ready_steps(self, core: RaftCore) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while core.has_ready():
                await self._handle_ready(core, core.ready())

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a replica task; any error stops the replica loudly."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._fatal(e)

    async def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        loop = asyncio.get_running_loop()
        self.ready_batches += 1
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        late = rd.messages
        notices: list[Message] = []
        if any(m.type == MsgType.SNAP for m in late):
            for m in late:
                if m.type == MsgType.SNAP:
                    self.snapshotter.send(m)  # streamed over HTTP, not the message stream
            late = [m for m in late if m.type != MsgType.SNAP]
        if rd.snapshot is not None:
            await self.snapshotter.install(rd.snapshot)
        if late:
            # Raft thesis 10.2.1: a leader may replicate entries while it writes them
            # itself; it counts its own copy only once durable (RaftCore.advance).
            early, late = early_messages(Ready(hard_state=rd.hard_state, messages=late),
                                         self.soft.role)
            if early and rd.committed and not rd.entries and rd.hard_state is None and all(
                    m.type == MsgType.APP and not m.entries for m in early):
                # Only the news of a commit: the proposers' answers go first (below).
                notices, early = early, []
            if early:
                self._send(self.group_id, early)
                # Let the peer links write them before the log thread takes the GIL for
                # this write's statements (about a tenth of a millisecond sooner there).
                await asyncio.sleep(0)
        if rd.hard_state is not None or rd.entries:
            if not self._save_inline(rd):
                await loop.run_in_executor(self.log_io, self.raftlog.save, rd.hard_state,
                                           rd.entries)
            self.entries_persisted += len(rd.entries)
        if late:
            self._send(self.group_id, late)
            if rd.committed:
                await asyncio.sleep(0)  # the answers go out before the apply below
        if rd.committed:
            # Entries are durable locally now. A small batch with nothing ahead of it is
            # applied right here (no thread hop: lower latency); larger ones go to the
            # state thread while the loop goes on persisting the next batch.
            if (not self._apply_items and not self._applying
                    and len(rd.committed) <= self.settings.inline_apply_max_entries
                    and sum(len(e.data) for e in rd.committed)
                    <= self.settings.inline_apply_max_bytes):
                self._applied(rd.committed, self.state.apply_batch(rd.committed))
                if notices:
                    # A leader tells its followers of the commit once the answers it
                    # completed are written: the proposer's task takes its result in
                    # the next loop turn, a stream's writer sends it in the one after.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
            else:
                self._apply_items.append(rd.committed)
                self._apply_wake.set()
        if notices:
            self._send(self.group_id, notices)
        core.advance(rd)
        if core.conf is not self._seen_conf:
            self._seen_conf = core.conf
            if self.on_conf is not None:
                self.on_conf(self.group_id, core.conf)
            if (self.restored_at is not None and self.node_id in core.conf.all_nodes()
                    and core.pending_conf_index() > self.restored_at):
                # Added again after the restore: from here on it is a member like any.
                self.restored_at = None
                await loop.run_in_executor(self.log_io, self.raftlog.clear_restored)
        lease = self.lease
        answered = False
        for rs in rd.read_states:
            heapq.heappush(self._parked_reads, (rs.index, rs.ctx))
            answered = answered or rs.ctx == self._fwd_inflight
            if lease is not None:
                started = self._read_started.pop(rs.ctx, None)
                if started is not None:
                    lease.confirmed(*started)
                if rs.ctx == lease.renewing:
                    lease.renewing = 0
        for ctx in rd.dropped_reads:
            answered = answered or ctx == self._fwd_inflight
            if lease is not None:
                self._read_started.pop(ctx, None)
                if ctx == lease.renewing:
                    lease.renewing = 0
            fut = self._reads.pop(ctx, None)
            if fut is not None and not fut.done():
                fut.set_exception(self._not_leader(core.leader))
        if answered:
            self._forwarded_answered(core)
        self._release_reads(self.applied_index)
        if self._ready_waiters:
            waiters, self._ready_waiters = self._ready_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _save_inline(self, rd: Ready) -> bool:
        """A follower's small write goes to raft.db from the event loop when the log
        thread is idle: its answer waits on that write anyway, and two thread hops are
        a good part of a follower's turn at one write in flight. The fsync holds the
        loop (not the GIL) for its duration, and the loop serves every group on this
        node: a group this node leads waits meanwhile. A leader always writes on the log
        thread: it replicates meanwhile. ``inline_log_max_entries = 0`` turns this off."""
        if (self.soft.role == Role.LEADER or self.settings.inline_log_max_entries == 0
                or len(rd.entries) > self.settings.inline_log_max_entries
                or sum(len(e.data) for e in rd.entries) > self.settings.inline_apply_max_bytes
                or not self.log_io.lock.acquire(blocking=False)):
            return False
        try:
            self.raftlog.save(rd.hard_state, rd.entries)
        finally:
            self.log_io.lock.release()
        self.inline_saves += 1
        return True

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._apply_items
        while True:
            while not q:
                self._apply_wake.clear()
                await self._apply_wake.wait()
            item = q.popleft()
            if isinstance(item, _Checkpoint):
                self._applying = True  # no inline apply on this connection meanwhile
                try:
                    await loop.run_in_executor(self._sm_io, self._checkpoint, self.state)
                finally:
                    self._applying = False
                continue
            if isinstance(item, InstallItem):
                installing = self._install_done = loop.create_future()
                try:
                    while self._thread_reads:  # (reads on other threads finish first)
                        self._thread_reads_idle = loop.create_future()
                        await self._thread_reads_idle
                    self.state = await loop.run_in_executor(
                        self._sm_io, self.snapshotter.install_sync, item)
                except BaseException as e:
                    item.done.set_exception(e)
                    raise
                finally:
                    self._install_done = None
                    installing.set_result(None)
                self.applied_index = item.snap.index
                item.done.set_result(None)
                self._release_reads(self.applied_index)
                continue
            batch = list(item)
            while q and isinstance(q[0], list):
                batch.extend(q.popleft())
            self._applying = True
            try:
                results = await loop.run_in_executor(self._sm_io, self.state.apply_batch, batch)
            finally:
                self._applying = False
            self._applied(batch, results)

    def _applied(self, batch: list[Entry], results: list[Any]) -> None:
        self.applied_index = batch[-1].index
        self._complete_proposals(batch, results)
        self._release_reads(self.applied_index)
        self.snapshotter.maybe_take(sum(len(e.data) for e in batch))
        self._since_checkpoint += len(batch)
        if self._since_checkpoint >= self.settings.checkpoint_entries:
            self._since_checkpoint = 0
            # Each WAL is checkpointed by its own writer, between two of its writes (see
            # RaftLogStore.checkpoint): raft.db on the log thread, state.db through the
            # apply queue (applies wait behind it, none is inline meanwhile).
            self.log_io.submit(self._checkpoint, self.raftlog)
            self._apply_items.append(_CHECKPOINT)
            self._apply_wake.set()

    @staticmethod
    def _checkpoint(store: RaftLogStore | MachineStore) -> None:
        try:
            store.checkpoint()
        except Exception as e:  # closed during shutdown or a snapshot install: skip
            log.debug("checkpoint skipped: %s", e)

    def _complete_proposals(self, committed: list[Entry], results: list[Any]) -> None:
        for e, res in zip(committed, results, strict=True):
            p = self._proposals.pop(e.index, None)
            if p is None:
                continue
            term, fut = p
            if fut.done():
                continue
            if term == e.term:
                fut.set_result(res)
            else:
                fut.set_exception(errors.OutcomeUnknown(
                    "leadership changed before the write committed; retry"))

    def _release_reads(self, applied: int) -> None:
        parked = self._parked_reads
        while parked and parked[0][0] <= applied:
            _, ctx = heapq.heappop(parked)
            fut = self._reads.pop(ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _on_soft_state(self, soft: SoftState) -> None:
        was_leader = self.soft.role == Role.LEADER
        self.soft = soft
        if soft.role == Role.LEADER:
            log.info("group %d: node %d is leader in term %d", self.group_id, self.node_id,
                     soft.term)
        elif was_leader:
            log.info("group %d: node %d lost leadership (term %d)", self.group_id,
                     self.node_id, soft.term)
            err = self._not_leader(soft.leader)
            # Entries already committed will still be applied here: their proposers get
            # the real answer (a removed leader steps down as its removal commits).
            committed = self.core.log.committed if self.core is not None else 0
            for index in [i for i in self._proposals if i > committed]:
                _, fut = self._proposals.pop(index)
                if not fut.done():
                    fut.set_exception(errors.OutcomeUnknown(
                        f"leadership lost before the write committed ({err})"))

    def _fail_all(self, exc: Exception) -> None:
        """Fail every waiter: proposals with OutcomeUnknown (they may still commit)."""
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(errors.OutcomeUnknown(f"write outcome unknown: {exc}"))
        self._proposals.clear()
        for fut in [*self._reads.values(), *(self._fwd_next or [])]:
            if not fut.done():
                fut.set_exception(exc)
        self._reads.clear()
        self._fwd_next, self._fwd_inflight = None, 0

    # --- introspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        if self.core is None:
            return {"group": self.group_id, "running": False}
        st = self.core.status()
        return {
            "group": self.group_id, "node": self.node_id, "running": not self.failed.done(),
            "role": st.role.name.lower(), "term": st.term, "leader": st.leader or None,
            "leader_address": self.address_of(st.leader) if st.leader else None,
            "commit": st.commit, "applied": self.applied_index, "last_index": st.last_index,
            "snapshot_index": st.snapshot_index,
            "voters": list(st.voters),
            "learners": list(st.learners),
            "member": self.node_id in self.core.conf.all_nodes(),
            "pending_conf_index": st.pending_conf_index, "campaigns": st.campaigns,
            "addresses": {str(k): a for k, a in self.core.conf.addresses},
            "progress": {str(p): {"match": m, "next": n, "state": s.lower()}
                         for p, (m, n, s) in st.progress.items()},
            "pending_proposals": len(self._proposals), "pending_reads": len(self._reads),
            "follower_reads": self.follower_reads,
            "lease": None if self.lease is None else {
                "reads": self.lease.reads,
                "remaining_ms": max(0, round((self.lease.until - self.lease.now()) * 1000))
                if self.lease.valid(self.core.term, self.lease.now())
                and self.core.lease_may_hold() else 0},
            "snapshot": self.snapshotter.status(),
        }
