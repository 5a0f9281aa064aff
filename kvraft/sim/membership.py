"""The simulated operator: random membership changes, made one plan at a time.

A *plan* is a short list of steps, each an intent about the committed membership:
``("learner", n)`` (n is a learner or a voter), ``("voter", n)``, ``("remove", n)``.
Plans: add a learner, promote a learner, remove a voter, remove a learner, replace the
leader (add a new node, promote it, remove whoever leads then), and remove a voter and
add it back under a new id (a wiped machine rejoining). A new node gets a fresh id and
starts with an empty membership, so it waits to be added.

Each world tick (while faulty) the operator looks at the committed membership (as
the checker established it from leaders' commit indexes): a step already true is
done; otherwise it asks the current leader, once that leader has committed an entry
of its term and has no change in flight, to propose the membership that makes it true
(always a single-server change of the committed one); a learner is promoted once it
holds the leader's committed log. A proposal lost with a leader
change is simply asked for again. A plan that cannot finish in
``PLAN_TICKS_PER_ELECTION * election_ticks`` ticks is abandoned.

Removed nodes keep running (the leader stops talking to them at once, so they never
learn they were removed) for a random while, then are retired: shut down for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvraft.raft import ConfState
from kvraft.raft.errors import RaftError

if TYPE_CHECKING:
    from kvraft.sim.cluster import Cluster

NEW = -1
"""Plan target: a node created when the step runs (the same one for the whole plan)."""
LEADER = 0
"""Plan target: the node that leads when the step runs."""

PLANS = ("add-learner", "promote", "remove-voter", "remove-learner", "replace-leader",
         "readd")
PLAN_TICKS_PER_ELECTION = 40
IDLE_NODES_MAX = 4
"""No new node is created while this many started nodes are not members."""


def describe(conf: ConfState) -> str:
    text = "voters " + ",".join(map(str, sorted(conf.voters)))
    if conf.learners:
        text += " learners " + ",".join(map(str, sorted(conf.learners)))
    return text


class Operator:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.plan: list[tuple[str, int]] = []
        self.plan_name = ""
        self.plan_started = 0
        self.next_id = cluster.cfg.nodes + 1
        self.ever_member: set[int] = set(cluster.nodes)
        self.retire_at: dict[int, int] = {}
        """Removed node -> the tick it is shut down."""
        self.retire_soon: set[int] = set()
        """Removed nodes to retire as soon as their removal is committed (re-added ones)."""

    def committed(self) -> ConfState:
        return self.c.checker.committed_conf()

    # --- each tick ------------------------------------------------------------------

    def tick(self) -> None:
        c = self.c
        self.retire_removed()
        if not self.plan:
            if c.rng.random() < c.cfg.conf_change_rate:
                self._new_plan()
            return
        if c.tick - self.plan_started > PLAN_TICKS_PER_ELECTION * c.cfg.election_ticks:
            c.trace(f"OPERATOR abandons {self.plan_name} at {self.plan[0]}")
            c.count("conf-abandoned")
            self.plan = []
            return
        self._step()

    def retire_removed(self) -> None:
        """Shut down, after their random delay, the nodes the committed membership dropped."""
        c = self.c
        conf = self.committed()
        members = conf.all_nodes()
        self.ever_member |= members
        for nid in sorted(self.ever_member - members):
            node = c.nodes[nid]
            if node.retired:
                continue
            if nid not in self.retire_at:
                delay = 0 if nid in self.retire_soon else c.rng.randint(
                    0, c.cfg.retire_ticks_max)
                self.retire_at[nid] = c.tick + delay
            if c.tick >= self.retire_at[nid]:
                c.retire(node)

    # --- plans ----------------------------------------------------------------------

    def _new_plan(self) -> None:
        c = self.c
        rng = c.rng
        conf = self.committed()
        name = rng.choice(PLANS)
        learners = sorted(conf.learners)
        voters = sorted(conf.voters)
        idle = sum(1 for n in c.nodes.values()
                   if not n.retired and n.id not in conf.all_nodes())
        plan: list[tuple[str, int]] = []
        if name == "add-learner":
            plan = [("learner", NEW)]
        elif name == "promote":
            plan = ([("voter", rng.choice(learners))] if learners
                    else [("learner", NEW), ("voter", NEW)])
        elif name == "remove-voter":
            lead = c.leader()
            target = (lead.id if lead is not None and lead.id in conf.voters
                      and rng.random() < c.cfg.leader_bias else rng.choice(voters))
            plan = [("remove", target)]
        elif name == "remove-learner" and learners:
            plan = [("remove", rng.choice(learners))]
        elif name == "replace-leader":
            plan = [("learner", NEW), ("voter", NEW), ("remove", LEADER)]
        elif name == "readd":
            v = rng.choice(voters)
            plan = [("remove", v), ("learner", NEW), ("voter", NEW)]
            self.retire_soon.add(v)
        if not plan or (idle >= IDLE_NODES_MAX and any(t == NEW for _, t in plan)):
            return
        self.plan, self.plan_name, self.plan_started = plan, name, c.tick
        c.count(f"plan-{name}")
        c.trace(f"OPERATOR plans {name}: {plan} (committed: {describe(conf)})")

    def _step(self) -> None:
        c = self.c
        conf = self.committed()
        action, target = self.plan[0]
        lead = c.leader()
        if target == LEADER:
            if lead is None:
                return
            target = lead.id
            self.plan[0] = (action, target)
        if target != NEW and self._done(action, target, conf):
            self.plan.pop(0)
            c.trace(f"OPERATOR {self.plan_name}: {action} n{target} done ({describe(conf)})")
            return
        if lead is None:
            return
        core = lead.the_core()
        if (core.conf != conf or core.log.term(core.log.committed) != core.term
                or core.pending_conf_index() > core.log.committed):
            return  # a stale leader, a fresh one, or a change in flight: wait
        if action == "voter" and target in core.prs and (
                core.prs[target].match < core.log.committed):
            return  # as operators do: promote a learner once it has caught up
        new = self._target_conf(action, target, conf)
        if new is None:
            c.trace(f"OPERATOR abandons {self.plan_name}: {action} n{target} is not possible "
                    f"({describe(conf)})")
            self.plan = []
            return
        if target == NEW:
            (target,) = new.all_nodes() - conf.all_nodes()
            c.add_node(target)
            self.plan = [(a, target if t == NEW else t) for a, t in self.plan]
        try:
            index, term = lead.propose_conf(new)
        except (RaftError, ValueError) as e:
            c.count("conf-refused")
            c.trace(f"OPERATOR n{lead.id} refuses {describe(new)}: {e}")
            return
        c.count("conf-propose")
        c.trace(f"OPERATOR n{lead.id} proposes {describe(new)} at {index}@t{term} "
                f"({self.plan_name}: {action} n{target})")

    @staticmethod
    def _done(action: str, target: int, conf: ConfState) -> bool:
        if action == "learner":
            return target in conf.all_nodes()
        if action == "voter":
            return target in conf.voters
        return target not in conf.all_nodes()

    def _target_conf(self, action: str, target: int, conf: ConfState) -> ConfState | None:
        """The single-server change of ``conf`` that does the step; None if not allowed."""
        cfg = self.c.cfg
        v, ln = conf.voters, conf.learners
        if action == "learner":
            if target == NEW:
                target = self.next_id
                self.next_id += 1
            return ConfState(v, ln | {target})
        if action == "voter":
            if target not in ln or len(v) >= cfg.voters_max:
                return None
            return ConfState(v | {target}, ln - {target})
        if target in v and len(v) <= max(1, cfg.voters_min):
            return None
        return ConfState(v - {target}, ln - {target})

