"""Simulated clients: proposals with unique payloads and ReadIndex reads, and their checks.

A proposal is *acknowledged* when the node that accepted it applies, in the same
lifetime, the entry at the returned index with the returned term; it *failed* if
that node applies another entry there, and its outcome is *unknown* if the node
crashes first. Payloads are unique, so every one may be applied at most once.

A read is issued to a node that believes it leads. Its ReadState must name an index
at least as large as the index of every write acknowledged before the read was
issued, and the state machine of the serving node at that index must contain each of
those writes (``linearizable-read``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvraft.raft import Entry, NotLeader, RaftError, ReadState
from kvraft.sim.node import is_command

if TYPE_CHECKING:
    from kvraft.sim.cluster import Cluster
    from kvraft.sim.node import SimNode


@dataclass(slots=True)
class Proposal:
    payload: bytes
    node: int
    incarnation: int
    index: int
    term: int
    issued: float
    status: str = "pending"
    """pending, acked, failed or unknown."""
    done: float = 0.0


@dataclass(slots=True)
class Read:
    ctx: int
    node: int
    incarnation: int
    issued: float
    acked_before: int
    """How many writes had been acknowledged when the read was issued."""
    min_index: int
    """The largest index among those writes."""
    index: int = -1
    status: str = "pending"
    """pending, confirmed (ReadState received), served, dropped or lost."""


class Client:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.next_payload = 0
        self.proposals: dict[bytes, Proposal] = {}
        self.pending: dict[tuple[int, int], dict[int, Proposal]] = {}
        """(node, incarnation) -> index -> proposal awaiting its outcome."""
        self.acked: list[Proposal] = []
        self.max_acked_index = 0
        self.next_ctx = 0
        self.reads: dict[int, Read] = {}
        self.stats = {"proposed": 0, "rejected": 0, "acked": 0, "failed": 0, "unknown": 0,
                      "reads": 0, "reads_served": 0, "reads_dropped": 0, "reads_lost": 0,
                      "follower_reads": 0}

    # --- writes -------------------------------------------------------------------------

    def propose(self, node: SimNode, prefix: str = "c") -> Proposal | None:
        """Propose a fresh payload to ``node``; None if it refused (not leader, ...)."""
        c = self.cluster
        self.next_payload += 1
        payload = f"{prefix}{self.next_payload}".encode()
        try:
            index, term = node.propose(payload)
        except (NotLeader, RaftError):
            self.stats["rejected"] += 1
            return None
        p = Proposal(payload, node.id, node.incarnation, index, term, c.now_ticks())
        self.proposals[payload] = p
        self.pending.setdefault((node.id, node.incarnation), {})[index] = p
        self.stats["proposed"] += 1
        c.trace(f"n{node.id} accepts {payload.decode()} at {index}@t{term}", level=2)
        return p

    def on_apply(self, node: SimNode, e: Entry) -> None:
        c = self.cluster
        if is_command(e) and e.data not in self.proposals:
            c.checker.fail("state-machine-safety",
                           f"n{node.id} applies {e.data!r} at {e.index}, never proposed")
        waiting = self.pending.get((node.id, node.incarnation))
        if not waiting:
            return
        p = waiting.pop(e.index, None)
        if p is None:
            return
        p.done = c.now_ticks()
        if e.term == p.term:
            if e.data != p.payload:
                c.checker.fail("log-matching", f"{p.payload!r} was accepted at "
                                               f"{p.index}@t{p.term} but {e.data!r} is there")
            p.status = "acked"
            self.acked.append(p)
            self.max_acked_index = max(self.max_acked_index, p.index)
            self.stats["acked"] += 1
            c.trace(f"ack {p.payload.decode()} at {p.index}@t{p.term} (n{node.id})", level=2)
        else:
            p.status = "failed"
            self.stats["failed"] += 1
            if e.data == p.payload:
                c.checker.fail("log-matching", f"{p.payload!r} accepted at {p.index}@t{p.term} "
                                               f"applied with term {e.term}")

    def on_install(self, node: SimNode, index: int) -> None:
        """``node`` replaced its state machine by a snapshot up to ``index``: proposals it
        accepted at or below it never see their entry applied (the runtime times them out
        with OutcomeUnknown)."""
        waiting = self.pending.get((node.id, node.incarnation))
        if not waiting:
            return
        for i in [i for i in waiting if i <= index]:
            waiting.pop(i).status = "unknown"
            self.stats["unknown"] += 1

    # --- reads --------------------------------------------------------------------------

    def read(self, node: SimNode, *, forward: bool = False) -> Read | None:
        c = self.cluster
        self.next_ctx += 1
        ctx = self.next_ctx
        r = Read(ctx, node.id, node.incarnation, c.now_ticks(), len(self.acked),
                 self.max_acked_index)
        try:
            node.read_index(ctx, forward=forward)
        except NotLeader:
            return None
        self.reads[ctx] = r
        self.stats["reads"] += 1
        if forward:
            self.stats["follower_reads"] += 1
        c.trace(f"n{node.id} read ctx={ctx} (must see index >= {r.min_index})", level=2)
        return r

    def _read_for(self, node: SimNode, ctx: int, what: str) -> Read | None:
        r = self.reads.get(ctx)
        if r is None or r.node != node.id or r.incarnation != node.incarnation:
            self.cluster.checker.fail("linearizable-read",
                                      f"n{node.id} reports {what} for unknown read ctx={ctx}")
            return None
        return r

    def on_read_state(self, node: SimNode, rs: ReadState) -> None:
        r = self._read_for(node, rs.ctx, "a ReadState")
        if r is None:
            return
        chk = self.cluster.checker
        if r.status != "pending":
            chk.fail("linearizable-read", f"n{node.id} answers read ctx={rs.ctx} twice")
        r.status = "confirmed"
        r.index = rs.index
        if rs.index < r.min_index:
            chk.fail("linearizable-read",
                     f"n{node.id} confirms read ctx={rs.ctx} (issued at tick {r.issued}) at "
                     f"index {rs.index}, but a write acknowledged before it is at "
                     f"{r.min_index}")

    def serve_read(self, node: SimNode, rs: ReadState) -> None:
        r = self.reads[rs.ctx]
        r.status = "served"
        self.stats["reads_served"] += 1
        sm = node.sm
        for p in self.acked[: r.acked_before]:
            if p.index > rs.index or sm[p.index - 1].data != p.payload:
                self.cluster.checker.fail(
                    "linearizable-read",
                    f"n{node.id} serves read ctx={rs.ctx} at index {rs.index} without write "
                    f"{p.payload!r} (acknowledged at {p.index} before the read was issued)")
        self.cluster.trace(f"n{node.id} serves read ctx={rs.ctx} at {rs.index}", level=2)

    def on_read_dropped(self, node: SimNode, ctx: int) -> None:
        r = self._read_for(node, ctx, "a dropped read")
        if r is None:
            return
        if r.status != "pending":
            self.cluster.checker.fail("linearizable-read",
                                      f"n{node.id} drops read ctx={ctx} after answering it")
        r.status = "dropped"
        self.stats["reads_dropped"] += 1

    def on_crash(self, node: SimNode, old_incarnation: int) -> None:
        for p in self.pending.pop((node.id, old_incarnation), {}).values():
            p.status = "unknown"
            self.stats["unknown"] += 1
        for r in self.reads.values():
            if r.node == node.id and r.incarnation == old_incarnation and r.status in (
                    "pending", "confirmed"):
                r.status = "lost"
                self.stats["reads_lost"] += 1
