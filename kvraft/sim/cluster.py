"""The simulated world: replicas, network, clients and faults, driven by one seed.

Simulated time advances in steps (``STEPS_PER_TICK`` per tick) through one event
queue ordered by (time, insertion order); every random choice comes from
``Cluster.rng`` (each core gets its own ``random.Random`` seeded from it), so a
seed replays exactly. There are no threads, clocks or sockets. SNAP messages do not
travel as messages but start a snapshot stream (``stream_snapshot``), as in the runtime.

A run (:meth:`Cluster.run`) has two phases: ``cfg.ticks`` ticks of random faults and
client traffic, then the settle phase: the network heals, every node restarts, the
faults stop, and a new proposal must commit within ``liveness_factor *
election_ticks`` ticks (``liveness``); then every member must apply every acknowledged
write exactly once (``durability``).

With ``conf_change_rate`` the operator (``membership.py``) also changes the membership
while faulty. Nodes it removed keep running until it retires them (a retired node never
restarts); the settle phase restarts every node that is not retired, and only the
members of the committed membership must apply everything (a removed node need not).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from kvraft.raft import Config, ConfState, Message, MsgType, RaftCore, Role, SoftState
from kvraft.raft.errors import RaftError
from kvraft.sim.checkers import Checker
from kvraft.sim.client import Client, Proposal
from kvraft.sim.config import STEPS_PER_TICK, SimConfig
from kvraft.sim.membership import Operator
from kvraft.sim.network import Network
from kvraft.sim.node import CoreFactory, SimNode, SnapData, is_command

PARTITION_KINDS = ("split", "isolate", "oneway", "partial")


class Cluster:
    def __init__(
        self,
        seed: int,
        cfg: SimConfig,
        *,
        rng: random.Random | None = None,
        core_factory: CoreFactory = RaftCore,
        verbose: int = 0,
        out: Callable[[str], None] = print,
    ) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = rng if rng is not None else random.Random(seed)
        self.verbose = verbose
        self.out = out
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.faulty = False
        self.partition_id = 0
        self.partition: str | None = None
        self.events: dict[str, int] = {}
        self.checker = Checker(self)
        self.client = Client(self)
        self.network = Network(self.rng, self.schedule, self._deliver, self.trace)
        self.network.verbose_msgs = verbose >= 3
        self.core_factory = core_factory
        ids = list(range(1, cfg.nodes + 1))
        conf = ConfState(frozenset(ids))
        self.nodes: dict[int, SimNode] = {}
        for i in ids:
            self.nodes[i] = SimNode(i, self._raft_config(i), conf, self, core_factory)
        self.operator = Operator(self)
        self._apply_network_params(cfg)
        for node in self.nodes.values():
            node.start()
            self._schedule_ticks(node)
        self.schedule(STEPS_PER_TICK, self._world_tick)

    def _raft_config(self, i: int) -> Config:
        cfg = self.cfg
        return Config(id=i, election_ticks=cfg.election_ticks,
                      heartbeat_ticks=cfg.heartbeat_ticks,
                      max_inflight_msgs=cfg.max_inflight_msgs, max_msg_bytes=cfg.max_msg_bytes,
                      pre_vote=cfg.pre_vote, check_quorum=cfg.check_quorum,
                      vote_lease=cfg.check_quorum)

    def add_node(self, nid: int) -> SimNode:
        """Start a new node with an empty membership: it waits to be added."""
        node = SimNode(nid, self._raft_config(nid), ConfState(frozenset()), self,
                       self.core_factory)
        self.nodes[nid] = node
        node.start()
        self._schedule_ticks(node)
        self.count("node-added")
        self.trace(f"NEW NODE n{nid} (empty membership)")
        return node

    def retire(self, node: SimNode) -> None:
        """Shut ``node`` down for good (the operator removed it from the group)."""
        if node.up:
            self.crash(node)
        node.retired = True
        self.count("retire")
        self.trace(f"RETIRE n{node.id}")

    def members(self) -> frozenset[int]:
        """The nodes of the committed membership."""
        return self.checker.committed_conf().all_nodes()

    # --- time and events ------------------------------------------------------------

    def schedule(self, delay: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (self.now + max(0, delay), self._seq, fn, args))
        self._seq += 1

    def run_until(self, t: int) -> None:
        q = self._queue
        while q and q[0][0] <= t:
            when, _, fn, args = heapq.heappop(q)
            self.now = when
            fn(*args)
        self.now = max(self.now, t)

    def run_ticks(self, n: int) -> None:
        self.run_until(self.now + n * STEPS_PER_TICK)

    def run_until_true(self, pred: Callable[[], bool], max_ticks: int) -> bool:
        """Process events one by one until ``pred()`` holds (checked after each event)."""
        end = self.now + max_ticks * STEPS_PER_TICK
        q = self._queue
        while not pred():
            if not q or q[0][0] > end:
                self.now = max(self.now, end)
                return pred()
            when, _, fn, args = heapq.heappop(q)
            self.now = when
            fn(*args)
        return True

    def wait_for_leader(self, max_ticks: int = 100, among: list[int] | None = None
                        ) -> SimNode | None:
        """Run until one node (of ``among``) leads and has committed an entry of its term."""
        def ready() -> bool:
            return self._settled_leader(among) is not None

        self.run_until_true(ready, max_ticks)
        return self._settled_leader(among)

    def _settled_leader(self, among: list[int] | None) -> SimNode | None:
        for n in self.leaders():
            c = n.the_core()
            if (among is None or n.id in among) and c.log.term(c.log.committed) == c.term:
                return n
        return None

    def now_ticks(self) -> float:
        return self.now / STEPS_PER_TICK

    @property
    def tick(self) -> int:
        return self.now // STEPS_PER_TICK

    def _schedule_ticks(self, node: SimNode) -> None:
        node.tick_phase = self.rng.randrange(STEPS_PER_TICK)
        delay = STEPS_PER_TICK - self.now % STEPS_PER_TICK + node.tick_phase
        self.schedule(delay, self._node_tick, node, node.incarnation)

    def _node_tick(self, node: SimNode, incarnation: int) -> None:
        if node.incarnation != incarnation or not node.up:
            return
        node.tick()
        self.schedule(STEPS_PER_TICK, self._node_tick, node, incarnation)

    def _deliver(self, m: Any) -> None:
        node = self.nodes[m.to]
        if node.up:
            node.receive(m)

    # --- messages and snapshot streams ------------------------------------------------

    def send(self, node: SimNode, m: Message) -> None:
        """A node sends ``m``: SNAP messages go with a snapshot stream, the rest by message."""
        if m.type == MsgType.SNAP:
            self.stream_snapshot(node, m)
        else:
            self.network.send(m)

    def stream_snapshot(self, node: SimNode, m: Message) -> None:
        """Stream the snapshot file a SNAP message names, out of band (as the runtime's
        ``Snapshotter.send``): the follower steps SNAP only once the file has arrived, and
        the sender reports the outcome to its core. A stream to a peer already being
        streamed to is not started; a stream dies with its sender; it fails if the file
        is gone, if the link is cut at its start or end, if the receiver is down at its
        end, or (``stream_fail``, with the loss fault) at random."""
        meta = m.snapshot
        if meta is None or m.to in node.streaming:
            return
        node.streaming.add(m.to)
        data = node.disk.files.get((meta.index, meta.term))
        cfg = self.cfg
        ok = data is not None and not self.network.is_blocked(m.frm, m.to)
        if ok and self.faulty and "loss" in cfg.faults and cfg.stream_fail \
                and self.rng.random() < cfg.stream_fail:
            ok = False
        self.count("snap-send")
        self.trace(f"n{m.frm} streams snapshot {meta.index}@t{meta.term} to n{m.to}"
                   + ("" if data is not None else " (file gone)"))
        self.schedule(self.rng.randint(1, cfg.stream_delay_max), self._stream_done, node,
                      node.incarnation, m, data, ok)

    def _stream_done(self, node: SimNode, incarnation: int, m: Message, data: SnapData | None,
                     ok: bool) -> None:
        if node.incarnation != incarnation:
            return  # the sender crashed: the stream died with it, nobody reports
        node.streaming.discard(m.to)
        dst = self.nodes[m.to]
        net = self.network
        ok = ok and dst.up and not net.is_blocked(m.frm, m.to) and not net.is_blocked(m.to, m.frm)
        meta = m.snapshot
        assert meta is not None
        if ok:
            assert data is not None
            self.trace(f"n{m.to} received snapshot {meta.index}@t{meta.term} from n{m.frm}",
                       level=2)
            dst.receive_snapshot(m, data)
        else:
            self.count("snap-fail")
            self.trace(f"snapshot stream n{m.frm} -> n{m.to} failed", level=2)
        if node.up:
            node.report_snapshot(m.to, ok)

    # --- tracing --------------------------------------------------------------------

    def trace(self, text: str, level: int = 1) -> None:
        if self.verbose >= level:
            self.out(f"{self.now // STEPS_PER_TICK:>7}.{self.now % STEPS_PER_TICK} {text}")

    def trace_role(self, node: SimNode) -> None:
        if self.verbose and node.core is not None:
            c = node.core
            if c.role == Role.LEADER:
                self.trace(f"n{node.id} becomes LEADER of term {c.term} "
                           f"(log {c.log.last_index()}, commit {c.log.committed})")
            else:
                self.trace(f"n{node.id} is {c.role.name} in term {c.term}", level=2)

    def on_soft_state(self, node: SimNode, ss: SoftState) -> None:
        self.trace(f"n{node.id} soft state: {ss.role.name} term {ss.term} leader {ss.leader}",
                   level=2)

    def count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    # --- queries --------------------------------------------------------------------

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leaders(self) -> list[SimNode]:
        """Up nodes that believe they lead, highest term first."""
        ls = [n for n in self.nodes.values()
              if n.core is not None and n.core.role == Role.LEADER]
        ls.sort(key=lambda n: -n.the_core().term)
        return ls

    def leader(self) -> SimNode | None:
        ls = self.leaders()
        return ls[0] if ls else None

    def max_term(self) -> int:
        return max(n.core.term if n.core is not None else n.disk.hard_state.term
                   for n in self.nodes.values())

    # --- faults ---------------------------------------------------------------------

    def _apply_network_params(self, cfg: SimConfig) -> None:
        net = self.network
        f = cfg.faults
        net.loss = cfg.loss if "loss" in f else 0.0
        net.dup = cfg.dup if "dup" in f else 0.0
        net.reorder = cfg.reorder if "reorder" in f else 0.0
        net.reorder_delay_max = cfg.reorder_delay_max
        net.delay_min = cfg.msg_delay_min
        net.delay_max = max(cfg.msg_delay_min, cfg.msg_delay_max)

    def crash(self, node: SimNode) -> None:
        old = node.incarnation
        node.crash()
        self.client.on_crash(node, old)
        self.count("crash")
        d = node.disk
        self.trace(f"CRASH n{node.id} (durable: term {d.hard_state.term}, "
                   f"log {d.describe_log()}, applied {d.applied})")

    def restart(self, node: SimNode) -> None:
        if node.up or node.retired:
            return
        node.start()
        self._schedule_ticks(node)
        self.count("restart")
        self.trace(f"RESTART n{node.id} (term {node.the_core().term}, "
                   f"log {node.disk.last_index()}, applied {node.applied})")

    def _random_crash(self) -> None:
        up = self.up_nodes()
        if self.faulty and up:
            self._crash_for_a_while(self._pick(up))

    def _crash_for_a_while(self, node: SimNode) -> None:
        rng = self.rng
        self.crash(node)
        if rng.random() < 0.5:
            down = rng.randint(0, max(1, self.cfg.election_ticks // 2))
        else:
            down = rng.randint(1, self.cfg.down_ticks_max)
        self.schedule(down * STEPS_PER_TICK + rng.randrange(STEPS_PER_TICK),
                      self._restart_event, node, node.incarnation)

    def maybe_crash_after_write(self, node: SimNode) -> bool:
        """Called by a node once a Ready's write is durable and its messages sent."""
        cfg = self.cfg
        if self.faulty and cfg.crash_after_write and "crash" in cfg.faults \
                and self.rng.random() < cfg.crash_after_write:
            self.trace(f"n{node.id} crashes right after a write")
            self._crash_for_a_while(node)
            return True
        return False

    def maybe_crash_during_install(self, node: SimNode) -> bool:
        """Called once a node recorded a snapshot with its log, before it replaced its
        state machine: the crash point the restart must repair."""
        cfg = self.cfg
        if self.faulty and cfg.install_crash and "crash" in cfg.faults \
                and self.rng.random() < cfg.install_crash:
            self.trace(f"n{node.id} crashes while installing a snapshot")
            self.count("install-crash")
            self._crash_for_a_while(node)
            return True
        return False

    def _restart_event(self, node: SimNode, incarnation: int) -> None:
        if node.incarnation == incarnation:
            self.restart(node)

    def heal(self) -> None:
        self.partition_id += 1
        if self.partition is not None:
            self.trace(f"HEAL ({self.partition})")
        self.partition = None
        self.network.heal()

    def isolate(self, nid: int) -> None:
        self.network.isolate(nid, self.nodes)
        self.partition = f"isolate n{nid}"
        self.trace(f"PARTITION {self.partition}")

    def split(self, *groups: list[int]) -> None:
        self.network.split(groups)
        self.partition = "split " + " | ".join(",".join(map(str, g)) for g in groups)
        self.trace(f"PARTITION {self.partition}")

    def _pick(self, candidates: list[SimNode]) -> SimNode:
        leaders = [n for n in candidates if n.core is not None and n.core.role == Role.LEADER]
        if leaders and self.rng.random() < self.cfg.leader_bias:
            return self.rng.choice(leaders)
        return self.rng.choice(candidates)

    def _random_partition(self) -> None:
        kinds = [k for k in PARTITION_KINDS if k in self.cfg.faults]
        if not kinds:
            return
        rng = self.rng
        kind = rng.choice(kinds)
        ids = [i for i, n in self.nodes.items() if not n.retired]
        if len(ids) < 2:
            return
        self.network.heal()
        if kind == "split":
            members = ids[:]
            rng.shuffle(members)
            cut = rng.randint(1, len(ids) - 1)
            self.split(sorted(members[:cut]), sorted(members[cut:]))
        elif kind == "isolate":
            self.isolate(self._pick([self.nodes[i] for i in ids]).id)
        else:
            pairs = [(a, b) for a in ids for b in ids if a < b]
            chosen = rng.sample(pairs, rng.randint(1, max(1, len(pairs) - 1)))
            desc = []
            for a, b in chosen:
                if kind == "partial":
                    self.network.block(a, b)
                    self.network.block(b, a)
                    desc.append(f"{a}-x-{b}")
                else:
                    if rng.random() < 0.5:
                        a, b = b, a
                    self.network.block(a, b)
                    desc.append(f"{a}-x->{b}")
            self.partition = f"{kind} {' '.join(desc)}"
            self.trace(f"PARTITION {self.partition}")
        self.count(kind)
        self.partition_id += 1
        ticks = rng.randint(1, self.cfg.partition_ticks_max)
        self.schedule(ticks * STEPS_PER_TICK + rng.randrange(STEPS_PER_TICK),
                      self._heal_event, self.partition_id)

    def _heal_event(self, pid: int) -> None:
        if pid == self.partition_id:
            self.heal()

    def _world_tick(self) -> None:
        cfg = self.cfg
        rng = self.rng
        if self.faulty:
            if "crash" in cfg.faults and rng.random() < cfg.crash_rate:
                self.schedule(rng.randrange(STEPS_PER_TICK), self._random_crash)
            if self.partition is None and rng.random() < cfg.partition_rate:
                self._random_partition()
            if "transfer" in cfg.faults and rng.random() < cfg.transfer_rate:
                lead = self.leader()
                voters = [] if lead is None else [
                    i for i in sorted(lead.the_core().conf.voters) if i != lead.id]
                if lead is not None and voters:
                    target = rng.choice(voters)
                    self.trace(f"TRANSFER n{lead.id} -> n{target}")
                    self.count("transfer")
                    try:
                        lead.transfer_leadership(target)
                    except (RaftError, ValueError):
                        pass
            if cfg.conf_change_rate:
                self.operator.tick()
        for rate, fn in ((cfg.propose_rate, self._client_propose),
                         (cfg.read_rate, self._client_read)):
            n = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
            for _ in range(n):
                self.schedule(rng.randrange(STEPS_PER_TICK), fn)
        if cfg.full_check_every and self.tick % cfg.full_check_every == 0:
            self.checker.full_scan()
            self.trace(f"status: {self.describe()}")
        self.schedule(STEPS_PER_TICK, self._world_tick)

    def _client_target(self) -> SimNode | None:
        up = self.up_nodes()
        if not up:
            return None
        leaders = [n for n in up if n.the_core().role == Role.LEADER]
        # Mostly the (believed) leaders; sometimes any member, as a confused client would.
        if leaders and self.rng.random() < 0.9:
            return self.rng.choice(leaders)
        members = self.members()
        return self.rng.choice([n for n in up if n.id in members] or up)

    def _client_propose(self) -> None:
        node = self._client_target()
        if node is not None:
            self.client.propose(node)

    def _client_read(self) -> None:
        if self.cfg.follower_reads and self.rng.random() < self.cfg.follower_reads:
            members = self.members()
            followers = [n for n in self.up_nodes()
                         if n.id in members and n.the_core().role != Role.LEADER]
            if followers:
                self.client.read(self.rng.choice(followers), forward=True)
                return
        node = self._client_target()
        if node is not None:
            self.client.read(node)

    # --- a whole run ----------------------------------------------------------------

    def run(self) -> None:
        """The faulty phase, then heal-and-settle with the liveness and final checks."""
        self.trace(f"seed {self.seed}: {self.cfg.describe()}")
        self.faulty = True
        self.run_ticks(self.cfg.ticks)
        self.settle()

    def calm_down(self) -> None:
        """Stop every fault: heal the network and restart every node."""
        self.faulty = False
        if not self.cfg.pre_vote:
            # Without pre-vote a removed node that missed its removal raises the group's
            # term at each of its election timeouts (refused votes, but the higher term
            # sticks): as an operator would, shut removed nodes down for good.
            for nid in sorted(self.operator.ever_member - self.members()):
                if not self.nodes[nid].retired:
                    self.retire(self.nodes[nid])
        self.cfg = self.cfg.calm()
        self._apply_network_params(self.cfg)
        self.heal()
        for node in self.nodes.values():
            self.restart(node)
        self.trace("ALL FAULTS STOP: network healed, every node up")

    def settle(self) -> None:
        self.calm_down()
        self.checker.full_scan()
        start = self.tick
        bound = self.cfg.liveness_factor * self.cfg.election_ticks
        marker = self.commit_marker(bound)
        if marker is None:
            self.checker.fail("liveness", f"no proposal committed within {bound} ticks after "
                                          f"the heal at tick {start}; " + self.describe())
            return
        self.trace(f"liveness: {marker.payload.decode()} committed at {marker.index} "
                   f"{self.tick - start} ticks after the heal")
        # Members catch up: each must keep making progress (no stall of ``bound``
        # ticks); a far-behind new member in a reordering network may need many rounds.
        deadline = self.tick + bound
        hard_stop = self.tick + 50 * bound
        seen: dict[int, int] = {}
        while self.tick < min(deadline, hard_stop):
            lagging = [n for n in self.nodes.values() if n.id in self.members()
                       and n.applied < self._final_index(marker)]
            if not lagging:
                break
            if any(n.applied > seen.get(n.id, -1) for n in lagging):
                deadline = self.tick + bound
            for n in lagging:
                seen[n.id] = max(seen.get(n.id, -1), n.applied)
            self.run_ticks(1)
        self.checker.full_scan()
        self.final_check(self._final_index(marker))

    def _final_index(self, marker: Proposal) -> int:
        return max(marker.index, self.client.max_acked_index)

    def commit_marker(self, bound: int) -> Proposal | None:
        """Propose to the current leader until a proposal is acknowledged (or ``bound``)."""
        deadline = self.tick + bound
        p: Proposal | None = None
        while self.tick <= deadline:
            if p is not None and p.status == "acked":
                return p
            if p is None or p.status in ("failed", "unknown") or (
                    p.status == "pending" and not self._still_leads(p)):
                lead = self.leader()
                p = self.client.propose(lead, prefix="m") if lead is not None else None
            self.run_ticks(1)
        return p if p is not None and p.status == "acked" else None

    def _still_leads(self, p: Proposal) -> bool:
        node = self.nodes[p.node]
        return (node.incarnation == p.incarnation and node.core is not None
                and node.core.role == Role.LEADER and node.core.term == p.term)

    def final_check(self, upto: int) -> None:
        """Every acknowledged write is applied on every member, exactly once (and on
        every other node, exactly once, as far as it applied)."""
        members = self.members()
        for node in self.nodes.values():
            if node.applied < upto and node.id in members:
                self.checker.fail("liveness", f"n{node.id} applied only {node.applied} of "
                                              f"{upto} committed entries; " + self.describe())
            for p in self.client.acked:
                if p.index > node.applied:
                    continue  # only possible with the liveness check disabled
                at = node.sm_payloads.get(p.payload)
                if at != p.index:
                    self.checker.fail("durability",
                                      f"acknowledged write {p.payload!r} ({p.index}@t{p.term}, "
                                      f"acked at tick {p.done}) is at {at} on n{node.id}")
            if len(node.sm_payloads) != sum(1 for e in node.sm if is_command(e)):
                self.checker.fail("state-machine-safety", f"n{node.id} applied a payload twice")

    def describe(self) -> str:
        return "; ".join(n.describe() for n in self.nodes.values())

    def summary(self) -> str:
        s = self.client.stats
        ev = " ".join(f"{k}={v}" for k, v in sorted(self.events.items()))
        terms = max(self.checker.leaders, default=0)
        conf = self.checker.committed_conf()
        membership = ""
        if len(self.checker.confs) > 1 or len(self.nodes) > len(conf.voters):
            membership = (f"voters={','.join(map(str, sorted(conf.voters)))} "
                          f"learners={','.join(map(str, sorted(conf.learners))) or '-'} ")
        return (f"ticks={self.tick} terms={terms} committed={len(self.checker.committed)} "
                f"{membership}"
                f"proposed={s['proposed']} acked={s['acked']} failed={s['failed']} "
                f"unknown={s['unknown']} reads={s['reads']} served={s['reads_served']} "
                + (f"follower_reads={s['follower_reads']} " if s["follower_reads"] else "")
                + f"msgs={self.network.sent} dropped={self.network.dropped} "
                f"lost={self.network.lost} dup={self.network.duplicated} "
                f"reordered={self.network.reordered} {ev}")
