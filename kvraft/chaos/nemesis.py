"""The nemesis: faults injected into a local cluster of real node processes.

Every choice comes from one ``random.Random(seed)``, so the schedule of a run (which
fault, on which nodes, for how long) is reproducible from its seed; the timing of the
processes themselves is not.

Fault kinds:

- ``kill``: SIGKILL a random node, restart it later;
- ``kill-leader``: SIGKILL the current leader, restart it later;
- ``pause``: SIGSTOP a random node (the leader half of the time), SIGCONT later;
- ``short-pause``: for the whole hold, SIGSTOP the leader (a random node one time in
  four) for 1-5 ticks at a time, 2-20 ticks apart: pauses about as long as a
  heartbeat interval or an election timeout, which leave a leader behind its lease,
  its followers' timers and its own view of who leads;
- ``partition``: a random majority/minority split (both directions);
- ``isolate-leader``: the leader alone on one side;
- ``bridge``: two halves that only one node (the bridge) sees both of;
- ``one-way``: one node's outbound traffic is dropped (it still hears the others);
- ``delay``: every node delays its outbound frames by up to N ms;
- ``loss``: every node drops a fraction of its outbound frames;
- ``majority-down``: SIGSTOP a majority of the nodes (no quorum: writes fail or end
  with an unknown outcome), SIGCONT later.

Shard faults (a sharded cluster, ``kvraft chaos --groups 2``), through the controller:

- ``move``: move a random range to another data group;
- ``split``: split the range holding a random key (often one the clients use);
- ``merge``: merge a random range into its left neighbour when both are on one group;
- ``leave``: a data group leaves (its ranges move to the others) and joins again at the
  end of the fault, after which the ranges are rebalanced back onto it;
- ``join``: rebalance (the plan of ``shardctl rebalance --apply``).

Membership faults (on data group 1, through ``/v1/admin/members``; any node):

- ``replace``: start a new node, add it (learner, then voter once caught up), and
  remove a random voter (the leader half of the time); the old node keeps running;
- ``remove-readd``: remove a random voter, add it back at the end of the fault;
- ``transfer``: hand leadership to a random other voter.

Partitions, delay and loss act inside each node's transport through the admin endpoint
(which requires the cluster secret).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvraft.testing.cluster import LocalCluster

log = logging.getLogger("kvraft.chaos")

PROCESS_KINDS = ("kill", "kill-leader", "pause", "short-pause", "partition",
                 "isolate-leader", "bridge", "one-way", "delay", "loss", "majority-down")
FAULT_KINDS = PROCESS_KINDS
SHARD_KINDS = ("move", "split", "merge", "join", "leave")
MEMBER_KINDS = ("replace", "remove-readd", "transfer")
ALL_KINDS = PROCESS_KINDS + SHARD_KINDS + MEMBER_KINDS
MAX_NODES = 6
"""``replace`` starts no new node beyond this many processes (it removes and re-adds)."""


@dataclass(slots=True)
class NemesisSettings:
    kinds: tuple[str, ...] = FAULT_KINDS
    hold_s: tuple[float, float] = (1.0, 4.0)
    """How long a fault lasts (uniform range)."""
    quiet_s: tuple[float, float] = (0.5, 2.0)
    """How long the cluster runs healthy between faults."""
    delay_ms: float = 50.0
    loss: float = 0.2
    split_chars: str = "0m"
    """First characters of the keys split at (those the workload uses)."""


@dataclass(slots=True)
class Nemesis:
    cluster: LocalCluster
    rng: random.Random
    settings: NemesisSettings = field(default_factory=NemesisSettings)
    counts: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)

    def _say(self, text: str) -> None:
        line = f"[{time.monotonic() - self._t0:7.2f}s] {text}"
        self.events.append(line)
        log.info("%s", line)

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Inject faults one after another until ``should_stop()``; always heals."""
        try:
            while not should_stop():
                self._sleep(self.rng.uniform(*self.settings.quiet_s), should_stop)
                if should_stop():
                    break
                kind = self.rng.choice(self.settings.kinds)
                undo = self._inject(kind)
                self.counts[kind] += 1
                self._sleep(self.rng.uniform(*self.settings.hold_s), should_stop)
                undo()
        finally:
            self.heal_all()

    @staticmethod
    def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not should_stop():
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # --- faults --------------------------------------------------------------------

    def _leader_or_random(self) -> int:
        lead = self.cluster.leader()
        return lead if lead is not None else self.rng.choice(self.cluster.ids)

    def _inject(self, kind: str) -> Callable[[], None]:
        if kind in SHARD_KINDS:
            return self._shard_fault(kind)
        if kind in MEMBER_KINDS:
            return self._member_fault(kind)
        c = self.cluster
        ids = list(c.ids)
        if kind in ("kill", "kill-leader"):
            victim = self._leader_or_random() if kind == "kill-leader" else self.rng.choice(ids)
            self._say(f"{kind}: SIGKILL node {victim}")
            c.kill(victim, signal.SIGKILL)
            return lambda: self._restart(victim)
        if kind == "pause":
            victim = self._leader_or_random() if self.rng.random() < 0.5 else self.rng.choice(ids)
            self._say(f"pause: SIGSTOP node {victim}")
            c.pause(victim)
            return lambda: self._resume(victim)
        if kind == "short-pause":
            return self._short_pauses(random.Random(self.rng.getrandbits(64)))
        if kind == "majority-down":
            victims = self.rng.sample(ids, len(ids) // 2 + 1)
            self._say(f"majority-down: SIGSTOP nodes {sorted(victims)}")
            for v in victims:
                c.pause(v)
            return lambda: [self._resume(v) for v in victims] and None
        if kind == "partition":
            self.rng.shuffle(ids)
            k = len(ids) // 2
            self._partition([set(ids[:k]), set(ids[k:])], kind)
        elif kind == "isolate-leader":
            lead = self._leader_or_random()
            self._partition([{lead}, set(ids) - {lead}], kind)
        elif kind == "bridge":
            self.rng.shuffle(ids)
            bridge, rest = ids[0], ids[1:]
            half = len(rest) // 2
            left, right = set(rest[:half]), set(rest[half:])
            blocked = {i: set() for i in c.ids}
            for a in left:
                for b in right:
                    blocked[a].add(b)
                    blocked[b].add(a)
            self._say(f"bridge: {sorted(left)} <-> {bridge} <-> {sorted(right)}")
            self._apply_blocks(blocked, blocked)
        elif kind == "one-way":
            victim = self._leader_or_random() if self.rng.random() < 0.5 else self.rng.choice(ids)
            others = [j for j in ids if j != victim]
            self._say(f"one-way: node {victim} cannot send to {others}")
            self._set(victim, blocked_out=others)
        elif kind == "delay":
            self._say(f"delay: up to {self.settings.delay_ms} ms on every link")
            for i in ids:
                self._set(i, delay_ms=self.settings.delay_ms)
        elif kind == "loss":
            self._say(f"loss: {self.settings.loss:.0%} of frames dropped on every link")
            for i in ids:
                self._set(i, loss=self.settings.loss)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return self._heal_network

    # --- shard faults ---------------------------------------------------------------------

    def _config(self) -> dict[str, Any] | None:
        for addr in self.cluster.controller:
            try:
                code, doc = self.cluster._request_addr(addr, "GET", "/v1/ctrl/config?num=-1")
            except (OSError, ValueError):
                continue
            if code == 200:
                cfg: dict[str, Any] = doc["config"]
                return cfg
        return None

    def _ctrl(self, op: dict[str, Any]) -> None:
        try:
            doc = self.cluster.ctrl(op, timeout_s=20.0)
            self._say(f"  -> configuration {doc.get('num')}")
        except Exception as e:  # refused (e.g. a stale plan) or no controller leader
            self._say(f"  -> not applied: {e}")

    def _plan_apply(self) -> None:
        for addr in self.cluster.controller:
            try:
                code, doc = self.cluster._request_addr(addr, "POST", "/v1/ctrl/plan",
                                                       {"apply": True}, timeout_s=20.0)
            except (OSError, ValueError):
                continue
            if code == 200:
                self._say(f"  -> rebalanced: {len(doc['plan']['moves'])} moves, "
                          f"configuration {doc['num']}")
                return
        self._say("  -> rebalance not applied")

    def _shard_fault(self, kind: str) -> Callable[[], None]:
        cfg = self._config()
        if cfg is None:
            self._say(f"{kind}: no controller answered; skipped")
            return lambda: None
        ranges = cfg["ranges"]
        gids = sorted(int(g) for g in cfg["groups"])
        rng = self.rng
        if kind == "move" and len(gids) > 1:
            rid, start, end, gid, _ = rng.choice(ranges)
            to = rng.choice([g for g in gids if g != gid])
            self._say(f"move: range {rid} [{start!r}, {end!r}) from group {gid} to {to}")
            self._ctrl({"op": "move", "key": start, "to": to})
        elif kind == "split":
            key = (rng.choice(self.settings.split_chars) + rng.choice("ak")
                   + str(rng.randint(0, 9)))
            self._say(f"split at {key!r}")
            self._ctrl({"op": "split", "key": key})
        elif kind == "merge":
            pairs = [ranges[i][1] for i in range(1, len(ranges))
                     if ranges[i][3] == ranges[i - 1][3]]
            if not pairs:
                self._say("merge: no neighbours on one group; skipped")
            else:
                key = rng.choice(pairs)
                self._say(f"merge the range at {key!r} into its left neighbour")
                self._ctrl({"op": "merge", "key": key})
        elif kind == "join":
            self._say("join: rebalance")
            self._plan_apply()
        elif kind == "leave" and len(gids) > 1:
            gid = rng.choice(gids)
            members = cfg["groups"][str(gid)]
            self._say(f"leave: group {gid} leaves")
            self._ctrl({"op": "leave", "gid": gid})

            def rejoin() -> None:
                self._say(f"join: group {gid} joins again")
                self._ctrl({"op": "join", "gid": gid, "members": members})
                self._plan_apply()
            return rejoin
        else:
            self._say(f"{kind}: nothing to do with groups {gids}")
        return lambda: None

    # --- membership faults -----------------------------------------------------------------

    def _voters(self) -> list[int] | None:
        c = self.cluster
        lead = c.leader()
        if lead is None:
            return None
        try:
            return list(c.members_of(1, via=lead)["committed_voters"])
        except Exception:
            return None

    def _member(self, op: str, node: int) -> bool:
        try:
            out = self.cluster.member(op, node, timeout_s=15.0)
        except Exception as e:  # no leader, a change in flight, a timeout: all expected
            self._say(f"  -> {op} {node} failed: {' '.join(str(e).split())[:200]}")
            return False
        self._say(f"  -> voters {out.get('voters')} learners {out.get('learners')}")
        return True

    def _member_fault(self, kind: str) -> Callable[[], None]:
        c = self.cluster
        voters = self._voters()
        if voters is None:
            self._say(f"{kind}: no leader to ask; skipped")
            return lambda: None
        lead = c.leader()
        pick = lead if lead in voters and self.rng.random() < 0.5 else self.rng.choice(voters)
        if kind == "transfer":
            others = [v for v in voters if v != lead]
            if lead is None or not others:
                self._say("transfer: no other voter; skipped")
                return lambda: None
            to = self.rng.choice(others)
            self._say(f"transfer: leadership of group 1 from {lead} to {to}")
            try:
                c._admin_call("POST", "/v1/admin/transfer-leader",
                              {"group": 1, "to": to, "timeout_s": 5.0}, None, 10.0)
            except Exception as e:
                self._say(f"  -> transfer failed: {' '.join(str(e).split())[:200]}")
            return lambda: None
        if kind == "replace" and len(c.ids) < MAX_NODES:
            new = c.new_node()
            self._say(f"replace: add new node {new} to group 1, then remove {pick}")
            if self._member("add", new) and len(voters) >= 3:
                self._member("remove", pick)
            return lambda: None
        if len(voters) < 3:
            self._say(f"{kind}: only voters {voters}; skipped")
            return lambda: None
        self._say(f"remove-readd: remove node {pick} from group 1")
        if not self._member("remove", pick):
            return lambda: None

        def readd() -> None:
            self._say(f"remove-readd: add node {pick} back")
            for _ in range(3):
                if self._member("add", pick):
                    return
        return readd

    def _partition(self, sides: list[set[int]], kind: str) -> None:
        blocked: dict[int, set[int]] = {i: set() for i in self.cluster.ids}
        for side in sides:
            for i in side:
                blocked[i] = set(self.cluster.ids) - side
        self._say(f"{kind}: {' | '.join(str(sorted(s)) for s in sides)}")
        self._apply_blocks(blocked, blocked)

    def _apply_blocks(self, out: dict[int, set[int]], inn: dict[int, set[int]]) -> None:
        for i in self.cluster.ids:
            self._set(i, blocked_out=sorted(out[i]), blocked_in=sorted(inn[i]))

    def _set(self, i: int, **rules: object) -> None:
        c = self.cluster
        if not c.running(i) or i in c.paused:
            return
        try:
            c.set_faults(i, **rules)
        except Exception as e:  # a node that just died cannot take rules; fine
            self._say(f"could not set faults on node {i}: {e}")

    def _heal_network(self) -> None:
        self._say("heal network")
        try:
            self.cluster.heal()
        except Exception as e:
            self._say(f"heal failed on some node: {e}")

    def _restart(self, i: int) -> None:
        self._say(f"restart node {i}")
        self.cluster.start_node(i)

    def _short_pauses(self, rng: random.Random) -> Callable[[], None]:
        """Short SIGSTOPs, one after another on a thread, until the returned undo.
        (The lengths and gaps come from ``rng``; which node leads at each one does not.)"""
        c = self.cluster
        tick_s = c.tick_ms / 1000
        stop = threading.Event()
        pauses: list[int] = []

        def flicker() -> None:
            while not stop.is_set():
                victim = (c.leader() if rng.random() < 0.75 else None) or rng.choice(c.ids)
                ticks = rng.uniform(1, 5)
                gap = rng.uniform(2, 20)
                if victim in c.paused or not c.running(victim):
                    stop.wait(gap * tick_s)
                    continue
                c.pause(victim)
                try:
                    stop.wait(ticks * tick_s)
                finally:
                    c.resume(victim)
                pauses.append(victim)
                stop.wait(gap * tick_s)

        t = threading.Thread(target=flicker, name="short-pauses", daemon=True)
        self._say("short-pause: SIGSTOP for 1-5 ticks at a time, mostly the leader")
        t.start()

        def undo() -> None:
            stop.set()
            t.join(timeout=30)
            self._say(f"short-pause: {len(pauses)} pauses "
                      f"({', '.join(f'{n}x node {i}' for i, n in sorted(Counter(pauses).items()))})")

        return undo

    def _resume(self, i: int) -> None:
        self._say(f"resume: SIGCONT node {i}")
        self.cluster.resume(i)

    def heal_all(self) -> None:
        """Undo everything: resume paused nodes, restart dead ones, clear network faults."""
        c = self.cluster
        for i in list(c.paused):
            self._resume(i)
        for i in c.ids:
            if not c.running(i):
                self._restart(i)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.heal()
                return
            except Exception:
                time.sleep(0.2)
