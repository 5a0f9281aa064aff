"""The simulated network: per-message delay, loss, duplication, reordering, partitions.

Links are directed: ``blocked`` holds the (from, to) pairs that currently drop every
message. A symmetric partition blocks both directions between its groups, a one-way
partition only one. A message is dropped if its link is blocked when it is sent or
when it would be delivered (a partition also loses the messages in flight).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from kvraft.raft import Message


class Network:
    def __init__(
        self,
        rng: random.Random,
        schedule: Callable[[int, Callable[[Message], None], Message], None],
        deliver: Callable[[Message], None],
        trace: Callable[[str], None],
    ) -> None:
        self.rng = rng
        self._schedule = schedule
        self._deliver = deliver
        self._trace = trace
        self.blocked: set[tuple[int, int]] = set()
        self.loss = 0.0
        self.dup = 0.0
        self.reorder = 0.0
        self.reorder_delay_max = 0
        self.delay_min = 1
        self.delay_max = 1
        self.sent = 0
        self.dropped = 0
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0
        self.delivered = 0
        self.verbose_msgs = False
        self.drop_if: Callable[[Message], bool] | None = None
        """A scenario's filter: messages it matches are dropped (sent or in flight)."""

    # --- topology -----------------------------------------------------------------

    def heal(self) -> None:
        self.blocked.clear()

    def split(self, groups: Iterable[Iterable[int]]) -> None:
        """Symmetric partition: no traffic between different groups."""
        gs = [sorted(g) for g in groups]
        for i, a in enumerate(gs):
            for j, b in enumerate(gs):
                if i != j:
                    self.blocked.update((x, y) for x in a for y in b)

    def isolate(self, node: int, all_nodes: Iterable[int]) -> None:
        for other in all_nodes:
            if other != node:
                self.blocked.add((node, other))
                self.blocked.add((other, node))

    def block(self, frm: int, to: int) -> None:
        """One-way partition: messages from ``frm`` to ``to`` are lost."""
        self.blocked.add((frm, to))

    def unblock(self, frm: int, to: int) -> None:
        self.blocked.discard((frm, to))

    def is_blocked(self, frm: int, to: int) -> bool:
        return (frm, to) in self.blocked

    # --- traffic ------------------------------------------------------------------

    def send(self, m: Message) -> None:
        self.sent += 1
        rng = self.rng
        if (m.frm, m.to) in self.blocked or (self.drop_if is not None and self.drop_if(m)):
            self._drop(m, "partitioned")
            return
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            self._drop(m, "lost")
            return
        copies = 2 if self.dup and rng.random() < self.dup else 1
        self.duplicated += copies - 1
        for k in range(copies):
            delay = rng.randint(self.delay_min, self.delay_max)
            if self.reorder and rng.random() < self.reorder:
                self.reordered += 1
                delay += rng.randint(1, self.reorder_delay_max)
            msg = m if k == 0 else replace(m, entries=list(m.entries))
            if self.verbose_msgs:
                self._trace(f"send {_fmt(msg)} delay={delay}{' (dup)' if k else ''}")
            self._schedule(delay, self._arrive, msg)

    def _arrive(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked or (self.drop_if is not None and self.drop_if(m)):
            self._drop(m, "partitioned in flight")
            return
        self.delivered += 1
        self._deliver(m)

    def _drop(self, m: Message, why: str) -> None:
        self.dropped += 1
        if self.verbose_msgs:
            self._trace(f"drop {_fmt(m)}: {why}")


def _fmt(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.entries:
        s += f" ents[{m.entries[0].index}..{m.entries[-1].index}]"
    if m.index or m.log_term:
        s += f" idx={m.index} lt={m.log_term}"
    if m.commit:
        s += f" commit={m.commit}"
    if m.reject:
        s += " REJECT"
    if m.ctx:
        s += f" ctx={m.ctx}"
    return s


format_message = _fmt
