"""Interpreter of the golden interaction tests of the Raft core (``tests/golden/*.txt``).

Rewriting the expected output
=============================

    KVRAFT_REWRITE_GOLDEN=1 /tmp/venv/bin/pytest tests/test_golden.py

runs every scenario and writes what the core produces back into the files, replacing
the expected blocks (comments and commands are kept). Always read the resulting
``git diff`` before keeping it: a golden file states what *correct* Raft does, so an
expectation must only change when the new transcript is right for Raft, not merely
because the core now prints something else. Rewriting refuses to record a transcript
that shows a safety or invariant violation. ``python -m tests.golden.interpreter FILE``
prints the transcript of one file without touching it.

File format
===========

The format follows the ``datadriven`` files of etcd-io/raft (``testdata/*.txt``)::

    # Comment lines and blank lines are kept as they are.
    command positional key=value   # a trailing comment is allowed
    ----
    expected output, up to the next blank line ("ok" if the command printed nothing)

Every node is built with its own ``random.Random`` seeded from its id and restart
count, so a transcript is reproducible; the seeds are fixed but never printed.

Notation: ``t/i`` is term/index. ``Log:t/i`` in a MsgApp is the entry preceding the
carried entries, in a MsgVote/MsgPreVote the candidate's last entry. A rejected
MsgAppResp prints ``Index`` (the rejected prev index) and ``Hint:t/i`` (the follower's
guess of the last entry that may match). ``ReadSeq`` is the leader's read sequence
carried by MsgApp/MsgHeartbeat and echoed by their responses (ReadIndex rounds).
``Quiet`` marks a MsgApp that wants an answer only if the follower rejects it (the news
of a commit to a follower that acknowledged everything it was sent).

Commands
========

add-nodes N [election=10] [heartbeat=1] [prevote=true] [checkquorum=true]
          [max-msg-bytes=B] [inflight=K] [inflight-bytes=B]
    Create voters 1..N of one group, all with an empty log and these settings.
campaign ID
    Tick ID until its election timer fires (it starts a (pre-)campaign).
tick ID... [n=1] / tick-heartbeat ID... / tick-election ID...
    Tick n times / one heartbeat interval / one election timeout (no output).
propose ID DATA...
    Propose one entry per DATA on ID.
read-index ID CTX... (or ctx=CTX)
    Ask ID for a linearizable read per context number.
transfer-leadership from=ID to=ID
    Start a leadership transfer.
report-unreachable ID PEER
    ID's transport failed to reach PEER.
compact ID INDEX
    ID's runtime took a snapshot at INDEX: storage and the core drop the log up to it.
send-snapshot from=ID to=ID
    ID's runtime sends its latest snapshot to a peer on its own initiative, in a MsgSnap
    of ID's current term (as etcd-io/raft's ``send-snapshot`` does).
add-node ID [voters=1,2,3] [learners=4]
    Create node ID with the settings of add-nodes and the given membership; without
    ``voters`` it has an empty one (a node joining the group, waiting to be added).
propose-conf ID voters=1,2,3 [learners=4]
    ID proposes this whole new membership (``voters=`` alone: no voters).
add-learner ID NEW / promote ID NODE / remove ID NODE
    ID proposes its current membership with NEW added as a learner (NEW is created
    with an empty membership if it does not exist yet), with learner NODE made a
    voter, or with NODE (voter or learner) removed.
conf ID...
    Print a node's membership (voters, learners) and its newest membership entry.
process-ready ID...
    Handle one Ready of each node: persist, send, apply, advance (printed).
deliver-msgs [ID...]
    Step every queued message addressed to these nodes (default: all), in order.
drop-msgs [from=ID,...] [to=ID,...] [type=MsgApp]
    Remove the matching queued messages from the network.
stabilize [ID...]
    Repeat "handle the Ready of each node, then deliver the messages of each node"
    (restricted to the given nodes) until nothing is left to do.
partition G1 | G2 ... / heal
    Drop (at delivery) every message between different groups; a node named in no
    group is alone. ``heal`` reconnects everyone.
crash ID / restart ID
    Lose ID's memory (entries not yet written, messages not yet sent, messages in flight
    to it; messages it already sent stay in flight) / rebuild it from its storage.
status ID... / raft-state / log ID... / storage ID...
    Print a node's status (with the leader's view of its followers), every node's role,
    a node's in-memory log, or what a node has made durable.

Any command accepts ``quiet=true``: its transcript is not printed (useful while setting
up a scenario), except ``error:`` and ``SAFETY VIOLATION`` lines.

While running, the interpreter also checks cluster-wide safety and prints a line
starting with ``SAFETY VIOLATION`` if two nodes apply different entries at one index or
two nodes lead the same term, and prints ``error:`` lines for exceptions of the core
(for example an ``InvariantViolation`` from ``check_invariants``).
"""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kvraft.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Message,
    MsgType,
    RaftCore,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
)
from kvraft.raft.progress import ProgressState
from kvraft.raft.roles import CAMPAIGN_TRANSFER
from kvraft.raft.types import APP_QUIET

MAX_STABILIZE_ROUNDS = 500
ALWAYS_SHOWN = ("error:", "SAFETY VIOLATION")
ADD_NODES_OPTIONS = {"election", "heartbeat", "prevote", "checkquorum", "max-msg-bytes",
                     "inflight", "inflight-bytes"}

ROLE_NAMES = {
    Role.FOLLOWER: "Follower",
    Role.PRE_CANDIDATE: "PreCandidate",
    Role.CANDIDATE: "Candidate",
    Role.LEADER: "Leader",
}

MSG_NAMES = {
    MsgType.PRE_VOTE: "MsgPreVote",
    MsgType.PRE_VOTE_RESP: "MsgPreVoteResp",
    MsgType.VOTE: "MsgVote",
    MsgType.VOTE_RESP: "MsgVoteResp",
    MsgType.APP: "MsgApp",
    MsgType.APP_RESP: "MsgAppResp",
    MsgType.HEARTBEAT: "MsgHeartbeat",
    MsgType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MsgType.SNAP: "MsgSnap",
    MsgType.TIMEOUT_NOW: "MsgTimeoutNow",
}
MSG_TYPES_BY_NAME = {name: t for t, name in MSG_NAMES.items()}

PROGRESS_NAMES = {
    ProgressState.PROBE: "Probe",
    ProgressState.REPLICATE: "Replicate",
    ProgressState.SNAPSHOT: "Snapshot",
}


class ScriptError(Exception):
    """A malformed command in a golden file (not a failure of the core)."""


# --- formatting ------------------------------------------------------------------------


def describe_entry(e: Entry) -> str:
    if e.kind == EntryKind.CONF:
        try:
            return f"{e.term}/{e.index} EntryConf {describe_conf(ConfState.decode(e.data))}"
        except ValueError:
            pass
    kind = "EntryNormal" if e.kind == EntryKind.NORMAL else "EntryConf"
    return f'{e.term}/{e.index} {kind} "{e.data.decode("utf-8", "backslashreplace")}"'


def _ids(nodes: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(nodes))


def describe_conf(c: ConfState) -> str:
    text = f"Voters:({_ids(c.voters)})"
    if c.learners:
        text += f" Learners:({_ids(c.learners)})"
    return text


def describe_snapshot(s: SnapshotMeta) -> str:
    return f"[Index:{s.index} Term:{s.term} {describe_conf(s.conf)}]"


def describe_message(m: Message) -> list[str]:
    """One line per message; a MsgApp with several entries lists them on extra lines."""
    head = f"{m.frm}->{m.to} {MSG_NAMES.get(m.type, str(m.type))} Term:{m.term}"
    t = m.type
    if t == MsgType.APP:
        head += f" Log:{m.log_term}/{m.index} Commit:{m.commit}"
        if m.hint == APP_QUIET:
            head += " Quiet"
    elif t == MsgType.APP_RESP:
        head += f" Index:{m.index}"
        if m.reject:
            head += f" Rejected Hint:{m.log_term}/{m.hint}"
    elif t in (MsgType.VOTE, MsgType.PRE_VOTE):
        head += f" Log:{m.log_term}/{m.index}"
        if m.ctx == CAMPAIGN_TRANSFER:
            head += " Transfer"
    elif t in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP):
        if m.reject:
            head += " Rejected"
    elif t == MsgType.HEARTBEAT:
        head += f" Commit:{m.commit}"
    elif t == MsgType.SNAP and m.snapshot is not None:
        head += f" Snapshot:{describe_snapshot(m.snapshot)}"
    if m.ctx and t in (MsgType.APP, MsgType.APP_RESP, MsgType.HEARTBEAT,
                       MsgType.HEARTBEAT_RESP):
        head += f" ReadSeq:{m.ctx}"
    if not m.entries:
        return [head]
    if len(m.entries) == 1:
        return [f"{head} Entries:[{describe_entry(m.entries[0])}]"]
    return [f"{head} Entries:["] + [f"  {describe_entry(e)}" for e in m.entries] + ["]"]


def describe_ready(rd: Ready) -> list[str]:
    lines: list[str] = []
    if rd.soft_state is not None:
        s = rd.soft_state
        lines.append(f"SoftState Lead:{s.leader} Role:{ROLE_NAMES[s.role]} Term:{s.term}")
    if rd.snapshot is not None:
        lines.append(f"Snapshot {describe_snapshot(rd.snapshot)}")
    if rd.hard_state is not None:
        lines.append(f"HardState Term:{rd.hard_state.term} Vote:{rd.hard_state.vote}")
    if rd.entries:
        lines.append("Entries:")
        lines.extend(describe_entry(e) for e in rd.entries)
    if rd.messages:
        lines.append("Messages:")
        for m in rd.messages:
            lines.extend(describe_message(m))
    if rd.committed:
        lines.append("CommittedEntries:")
        lines.extend(describe_entry(e) for e in rd.committed)
    if rd.read_states:
        lines.append("ReadStates:")
        lines.extend(f"ctx={r.ctx} index={r.index}" for r in rd.read_states)
    if rd.dropped_reads:
        lines.append("DroppedReads: " + " ".join(str(c) for c in rd.dropped_reads))
    return lines


# --- the simulated cluster ---------------------------------------------------------------


@dataclass
class Storage:
    """What one node has made durable (what a restart rebuilds it from)."""

    conf: ConfState
    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    applied: int = 0


@dataclass
class Node:
    id: int
    cfg: Config
    storage: Storage
    core: RaftCore | None = None
    incarnation: int = 0

    def up(self) -> RaftCore:
        if self.core is None:
            raise ScriptError(f"node {self.id} is down")
        return self.core


def parse_ids(v: str) -> frozenset[int]:
    try:
        return frozenset(int(x) for x in v.split(",") if x)
    except ValueError as e:
        raise ScriptError(f"not a list of node ids: {v!r}") from e


def parse_conf(kw: dict[str, str]) -> ConfState:
    return ConfState(parse_ids(kw.get("voters", "")), parse_ids(kw.get("learners", "")))


def parse_bool(v: str) -> bool:
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ScriptError(f"not a boolean: {v!r}")


class Env:
    """A cluster of RaftCores, their storage and a network of queued messages."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.network: list[Message] = []
        self.groups: list[frozenset[int]] = []
        self.applied_at: dict[int, tuple[int, bytes, int]] = {}
        self.leader_of_term: dict[int, int] = {}
        self.out: list[str] = []
        self.settings: dict[str, str] = {}
        """The options of ``add-nodes``, used by ``add-node`` too."""

    # --- running one command ------------------------------------------------------

    def run(self, line: str) -> str:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise ScriptError(f"cannot parse {line!r}: {e}") from e
        if not tokens:
            raise ScriptError("empty command")
        name, args = tokens[0], tokens[1:]
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        handler: Callable[[list[str], dict[str, str]], None] | None = getattr(
            self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScriptError(f"unknown command {name!r}")
        quiet = parse_bool(kw.pop("quiet", "false"))
        self.out = []
        handler(pos, kw)
        if quiet:
            self.out = [ln for ln in self.out if ln.lstrip().startswith(ALWAYS_SHOWN)]
        text = "\n".join(self.out).rstrip()
        if not text:
            return "ok"
        if any(not ln.strip() for ln in text.split("\n")):
            raise ScriptError(f"output of {line!r} contains a blank line")
        return text

    def emit(self, line: str) -> None:
        self.out.append(line)

    def node(self, raw: str) -> Node:
        try:
            return self.nodes[int(raw)]
        except (ValueError, KeyError) as e:
            raise ScriptError(f"no node {raw!r}") from e

    def ids(self, pos: Iterable[str]) -> list[int]:
        ids = sorted({self.node(p).id for p in pos})
        return ids or sorted(self.nodes)

    def _guard(self, node: Node, what: Callable[[RaftCore], object], indent: str = "") -> bool:
        """Run ``what`` on the node's core; print errors; check invariants afterwards."""
        core = node.up()
        ok = True
        try:
            what(core)
        except (RaftError, ValueError) as e:
            self.emit(f"{indent}error: {type(e).__name__}: {e}")
            ok = False
        self._check(node, indent)
        return ok

    def _check(self, node: Node, indent: str = "") -> None:
        core = node.core
        if core is None:
            return
        try:
            core.check_invariants()
        except RaftError as e:
            self.emit(f"{indent}error: {type(e).__name__} on {node.id}: {e}")
        if core.role == Role.LEADER:
            prev = self.leader_of_term.setdefault(core.term, node.id)
            if prev != node.id:
                self.emit(f"{indent}SAFETY VIOLATION: {node.id} leads term {core.term}, "
                          f"already led by {prev}")

    # --- setup ----------------------------------------------------------------------

    def cmd_add_nodes(self, pos: list[str], kw: dict[str, str]) -> None:
        if self.nodes:
            raise ScriptError("add-nodes may be used once per file")
        unknown = set(kw) - ADD_NODES_OPTIONS
        if unknown:
            raise ScriptError(f"unknown add-nodes options: {sorted(unknown)}")
        n = int(pos[0])
        voters = frozenset(range(1, n + 1))
        self.settings = dict(kw)
        for i in sorted(voters):
            self._add(i, ConfState(voters))

    def _add(self, i: int, conf: ConfState) -> None:
        kw = self.settings
        defaults = Config(id=1)
        cfg = Config(
            id=i,
            election_ticks=int(kw.get("election", defaults.election_ticks)),
            heartbeat_ticks=int(kw.get("heartbeat", defaults.heartbeat_ticks)),
            pre_vote=parse_bool(kw.get("prevote", "true")),
            check_quorum=parse_bool(kw.get("checkquorum", "true")),
            max_msg_bytes=int(kw.get("max-msg-bytes", defaults.max_msg_bytes)),
            max_inflight_msgs=int(kw.get("inflight", defaults.max_inflight_msgs)),
            max_inflight_bytes=int(kw.get("inflight-bytes", defaults.max_inflight_bytes)),
        )
        node = Node(i, cfg, Storage(conf))
        self.nodes[i] = node
        self._start(node)

    def cmd_add_node(self, pos: list[str], kw: dict[str, str]) -> None:
        i = int(pos[0])
        if i <= 0 or i in self.nodes:
            raise ScriptError(f"node {i} exists already (or is not a valid id)")
        if not self.nodes:
            raise ScriptError("add-nodes comes first")
        self._add(i, parse_conf(kw) if "voters" in kw else ConfState(frozenset()))

    def _start(self, node: Node) -> None:
        st = node.storage
        # The membership at the snapshot (or the bootstrap one); CONF entries after it
        # in the log override it (the core reads them).
        conf = st.snapshot.conf if st.snapshot is not None else st.conf
        state = InitialState(conf=conf, hard_state=st.hard_state, snapshot=st.snapshot,
                             entries=list(st.entries), applied=st.applied)
        rng = random.Random(node.id * 1000 + node.incarnation)
        node.core = RaftCore(node.cfg, rng, state)

    # --- time and client requests ---------------------------------------------------

    def _tick(self, pos: list[str], times: Callable[[Node], int]) -> None:
        if not pos:
            raise ScriptError("tick needs node ids")
        for i in self.ids(pos):
            node = self.nodes[i]
            for _ in range(times(node)):
                self._guard(node, RaftCore.tick)

    def cmd_tick(self, pos: list[str], kw: dict[str, str]) -> None:
        n = int(kw.get("n", "1"))
        self._tick(pos, lambda _node: n)

    def cmd_tick_heartbeat(self, pos: list[str], kw: dict[str, str]) -> None:
        self._tick(pos, lambda node: node.cfg.heartbeat_ticks)

    def cmd_tick_election(self, pos: list[str], kw: dict[str, str]) -> None:
        self._tick(pos, lambda node: node.cfg.election_ticks)

    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        core = node.up()
        if core.role == Role.LEADER:
            raise ScriptError(f"{node.id} is the leader")
        for _ in range(2 * node.cfg.election_ticks + 1):
            self._guard(node, RaftCore.tick)
            if core.election_elapsed == 0:  # only a campaign resets it during a tick
                return
        raise ScriptError(f"{node.id} did not campaign")

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        for data in pos[1:]:
            self._guard(node, partial(RaftCore.propose, data=data.encode()))

    def cmd_read_index(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        ctxs = [int(c) for c in pos[1:]] + ([int(kw["ctx"])] if "ctx" in kw else [])
        for ctx in ctxs:
            self._guard(node, partial(RaftCore.read_index, ctx=ctx))

    def cmd_transfer_leadership(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(kw["from"])
        target = int(kw["to"])
        self._guard(node, lambda core: core.transfer_leadership(target))

    def _propose_conf(self, node: Node, conf: ConfState) -> None:
        self._guard(node, lambda core: core.propose_conf(conf))

    def cmd_propose_conf(self, pos: list[str], kw: dict[str, str]) -> None:
        self._propose_conf(self.node(pos[0]), parse_conf(kw))

    def cmd_add_learner(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        new = int(pos[1])
        if new not in self.nodes:
            self._add(new, ConfState(frozenset()))
        c = node.up().conf
        self._propose_conf(node, ConfState(c.voters, c.learners | {new}))

    def cmd_promote(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        p = int(pos[1])
        c = node.up().conf
        self._propose_conf(node, ConfState(c.voters | {p}, c.learners - {p}))

    def cmd_remove(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        p = int(pos[1])
        c = node.up().conf
        self._propose_conf(node, ConfState(c.voters - {p}, c.learners - {p}))

    def cmd_report_unreachable(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        peer = int(pos[1])
        self._guard(node, lambda core: core.report_unreachable(peer))

    def cmd_compact(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        index = int(pos[1])
        core = node.up()
        term = core.log.term(index)
        if term is None:
            return
        snap = SnapshotMeta(index, term, core.conf_at(index))

        def take(c: RaftCore) -> None:
            c.set_latest_snapshot(snap)
            c.compact(index)

        if not self._guard(node, take):
            return
        st = node.storage
        st.snapshot = snap
        st.entries = [e for e in st.entries if e.index > index]

    def cmd_send_snapshot(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(kw["from"])
        to = self.node(kw["to"]).id
        snap = node.storage.snapshot
        if snap is None:
            raise ScriptError(f"node {node.id} has no snapshot")
        m = Message(MsgType.SNAP, to=to, frm=node.id, term=node.up().term, snapshot=snap)
        self.network.append(m)
        for line in describe_message(m):
            self.emit(line)

    # --- Ready handling and the network ------------------------------------------------

    def _handle_ready(self, node: Node, indent: str) -> None:
        core = node.up()
        rd = core.ready()
        self.emit(f"> {node.id} handling Ready")
        for line in describe_ready(rd):
            self.emit(indent + line)
        st = node.storage
        # 1. install the snapshot; 2. persist the hard state and the entries.
        if rd.snapshot is not None:
            st.snapshot = rd.snapshot
            st.conf = rd.snapshot.conf
            st.entries = []
            st.applied = rd.snapshot.index
        if rd.hard_state is not None:
            st.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            st.entries = [e for e in st.entries if e.index < first] + list(rd.entries)
            base = st.snapshot.index if st.snapshot else 0
            if any(e.index != base + 1 + k for k, e in enumerate(st.entries)):
                self.emit(f"{indent}error: storage of {node.id} has a gap: "
                          + " ".join(f"{e.term}/{e.index}" for e in st.entries))
        # 3. send; 4. apply; 5. (reads are printed above); 6. advance.
        self.network.extend(rd.messages)
        for e in rd.committed:
            self._apply(node, e, indent)
        core.advance(rd)
        self._check(node, indent)

    def _apply(self, node: Node, e: Entry, indent: str) -> None:
        seen = self.applied_at.setdefault(e.index, (e.term, e.data, node.id))
        if seen[:2] != (e.term, e.data):
            other = Entry(e.index, seen[0], seen[1])
            self.emit(f"{indent}SAFETY VIOLATION: {node.id} applied {describe_entry(e)} "
                      f"but {seen[2]} applied {describe_entry(other)}")
        if e.index != node.storage.applied + 1:
            self.emit(f"{indent}error: {node.id} applied {e.index} after "
                      f"{node.storage.applied}")
        node.storage.applied = e.index

    def _blocked(self, m: Message) -> str | None:
        if m.to not in self.nodes:
            return "no such node"
        if self.nodes[m.to].core is None:
            return "down"
        if self.groups and self._group(m.frm) != self._group(m.to):
            return "partitioned"
        return None

    def _group(self, node_id: int) -> object:
        for g in self.groups:
            if node_id in g:
                return g
        return ("alone", node_id)

    def _deliver(self, node_id: int) -> None:
        msgs = [m for m in self.network if m.to == node_id]
        if not msgs:
            return
        self.network = [m for m in self.network if m.to != node_id]
        delivered = [m for m in msgs if self._blocked(m) is None]
        dropped = [m for m in msgs if self._blocked(m) is not None]
        node = self.nodes[node_id]
        if delivered:
            self.emit(f"> {node_id} receiving messages")
            for m in delivered:
                for line in describe_message(m):
                    self.emit("  " + line)
                self._guard(node, partial(RaftCore.step, m=m), indent="  ")
        if dropped:
            self.emit(f"> {node_id} dropping messages ({self._blocked(dropped[0])})")
            for m in dropped:
                for line in describe_message(m):
                    self.emit("  " + line)

    def _emit_dropped(self, m: Message) -> None:
        first, *rest = describe_message(m)
        self.emit("dropped: " + first)
        for line in rest:
            self.emit("         " + line)

    def cmd_process_ready(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            node = self.nodes[i]
            if node.core is not None and node.core.has_ready():
                self._handle_ready(node, "  ")

    def cmd_deliver_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            self._deliver(i)

    def cmd_drop_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        def ids(key: str) -> set[int] | None:
            return {int(x) for x in kw[key].split(",")} if key in kw else None

        frm, to = ids("from"), ids("to")
        if "type" in kw and kw["type"] not in MSG_TYPES_BY_NAME:
            raise ScriptError(f"unknown message type {kw['type']!r}")

        def matches(m: Message) -> bool:
            return ((frm is None or m.frm in frm) and (to is None or m.to in to)
                    and ("type" not in kw or m.type == MSG_TYPES_BY_NAME[kw["type"]]))

        for m in self.network:
            if matches(m):
                self._emit_dropped(m)
        self.network = [m for m in self.network if not matches(m)]

    def cmd_stabilize(self, pos: list[str], kw: dict[str, str]) -> None:
        ids = self.ids(pos)
        for _ in range(MAX_STABILIZE_ROUNDS):
            done = True
            for i in ids:
                core = self.nodes[i].core
                if core is not None and core.has_ready():
                    self._handle_ready(self.nodes[i], "  ")
                    done = False
            for i in ids:
                if any(m.to == i for m in self.network):
                    self._deliver(i)
                    done = False
            if done:
                return
        self.emit(f"error: not stable after {MAX_STABILIZE_ROUNDS} rounds")

    def cmd_partition(self, pos: list[str], kw: dict[str, str]) -> None:
        groups: list[frozenset[int]] = []
        current: set[int] = set()
        for p in [*pos, "|"]:
            if p == "|":
                if current:
                    groups.append(frozenset(current))
                current = set()
            else:
                current.add(self.node(p).id)
        self.groups = groups

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> None:
        self.groups = []

    # --- failures ---------------------------------------------------------------------

    def cmd_crash(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        node.up()
        node.core = None
        for m in self.network:
            if m.to == node.id:
                self._emit_dropped(m)
        self.network = [m for m in self.network if m.to != node.id]

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.node(pos[0])
        if node.core is not None:
            raise ScriptError(f"node {node.id} is running")
        node.incarnation += 1
        self._start(node)

    # --- inspection ---------------------------------------------------------------------

    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            core = self.nodes[i].core
            if core is None:
                self.emit(f"{i}: down")
                continue
            s = core.status()
            line = (f"{i}: {ROLE_NAMES[s.role]} term={s.term} vote={s.vote} lead={s.leader} "
                    f"commit={s.commit} applied={s.applied} last={s.last_index}")
            if s.snapshot_index:
                line += f" snapshot={s.snapshot_index}"
            self.emit(line)
            if s.role != Role.LEADER:
                continue
            for p, pr in sorted(core.prs.items()):
                desc = f"  {p}: {PROGRESS_NAMES[pr.state]} match={pr.match} next={pr.next}"
                if p != core.id and pr.is_paused():
                    desc += " paused"
                if len(pr.inflights):
                    full = "[full]" if pr.inflights.full() else ""
                    desc += f" inflight={len(pr.inflights)}{full}"
                self.emit(desc)

    def cmd_conf(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            core = self.nodes[i].core
            if core is None:
                self.emit(f"{i}: down")
                continue
            self.emit(f"{i}: {describe_conf(core.conf)} pending={core.pending_conf_index()}")

    def cmd_raft_state(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in sorted(self.nodes):
            core = self.nodes[i].core
            if core is None:
                self.emit(f"{i}: down")
            else:
                self.emit(f"{i}: {ROLE_NAMES[core.role]} term={core.term} lead={core.leader}")

    def cmd_log(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            log = self.nodes[i].up().log
            if len(pos) > 1 or not pos:
                self.emit(f"{i}:")
            if log.snapshot_index:
                self.emit(f"snapshot {log.snapshot_term}/{log.snapshot_index}")
            for e in log.entries:
                self.emit(describe_entry(e))
            self.emit(f"commit={log.committed} applied={log.applied} last={log.last_index()}")

    def cmd_storage(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self.ids(pos):
            st = self.nodes[i].storage
            self.emit(f"{i}: HardState Term:{st.hard_state.term} Vote:{st.hard_state.vote} "
                      f"applied={st.applied}")
            if st.snapshot is not None:
                self.emit(f"snapshot {describe_snapshot(st.snapshot)}")
            for e in st.entries:
                self.emit(describe_entry(e))


# --- files --------------------------------------------------------------------------------


@dataclass
class Block:
    """One command of a golden file, with the line it starts on and its expected output."""

    line_no: int
    command: str
    expected: str
    actual: str = ""


def parse(text: str) -> list[str | Block]:
    """Split a golden file into verbatim lines and command blocks."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    items: list[str | Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            items.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ScriptError(f"line {i + 1}: command {line!r} is not followed by '----'")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        items.append(Block(i + 1, line, "\n".join(lines[i + 2:j])))
        i = j
    return items


def render(items: list[str | Block]) -> str:
    out: list[str] = []
    for it in items:
        if isinstance(it, Block):
            out.extend([it.command, "----", it.actual])
        else:
            out.append(it)
    return "\n".join(out) + "\n"


def run_text(text: str) -> list[str | Block]:
    """Run every command of a golden file; fills in each block's ``actual`` output."""
    items = parse(text)
    env = Env()
    for it in items:
        if isinstance(it, Block):
            try:
                it.actual = env.run(it.command)
            except ScriptError as e:
                raise ScriptError(f"line {it.line_no}: {e}") from e
    return items


def run_file(path: Path) -> list[str | Block]:
    return run_text(path.read_text())


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        sys.stdout.write(render(run_file(Path(arg))))
