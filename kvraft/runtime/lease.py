"""Leader leases: linearizable reads without a quorum round of their own (off by default).

With ``replica.lease_reads = 1`` a leader that a quorum has confirmed recently serves a
read once its state machine has applied its commit index, instead of confirming its
leadership again (ReadIndex) for that read. The lease is renewed by the ReadIndex
rounds themselves: a read near the lease's end starts one in the background. A leader
under its lease also answers a follower's request for a read index (a follower read) at
once with its commit index: the follower's read began before the request left, so
before the leader read its clock, and the argument below holds for it unchanged.

Why no other leader can commit while the lease holds
----------------------------------------------------
Let L lead term t. At time ``T0`` on L's clock (see below), L registers a ReadIndex
round; the heartbeats of that round leave after ``T0``. Say a quorum Q of the voters
(L included) answers it. Each follower F in Q received a term-t message from L at some
time ``R >= T0``; on it F reset ``election_elapsed`` to 0 and took L as its leader.

1. *F refuses to vote.* Under check-quorum with ``Config.vote_lease`` (on in the
   runtime), a replica ignores (pre-)votes of higher terms, except a vote forced by a
   leadership transfer, for ``election_ticks`` ticks after it last heard from a leader
   (``RaftCore.leader_contact``; ``raft.roles.step``). That holds whatever it learns
   meanwhile: a higher-term answer that clears its ``leader`` does not end it. It also
   holds for a replica's first ``election_ticks`` ticks after it starts, so a restart
   does not make F forget what it promised. F's ticks are never less than ``tick``
   apart by its monotonic clock (``Replica._ticker`` drops the ticks a stalled loop
   missed instead of running them in a burst). So F votes no sooner than
   ``R + (election_ticks - 1) * tick``.
2. *Any quorum that can elect meets Q, or needs a candidate that heard from L.* Q is a
   quorum of Mq, the newest membership in L's log when the round was confirmed. A
   candidate wins a quorum of the newest membership in its own log. Only a candidate
   whose log holds every committed entry can win, so that membership is one of:
   - Mq;
   - the one before Mq, when Mq is not yet committed. Memberships change by one
     server at a time, so its quorums meet every quorum of Mq, Q included;
   - one that L appended after T0. Then the candidate heard from L after T0, and it
     campaigns no sooner than an election timeout after that, which is later than F
     may vote.
   L votes for no one while it leads (its own ``election_elapsed`` stays below
   ``election_ticks``), and once it steps down it no longer serves leased reads.
3. *A transfer ends the lease.* The TimeoutNow of a leadership transfer makes its
   target's votes override the followers' refusal. L stops using its lease in term t
   as soon as it begins a transfer (``RaftCore.lease_may_hold``), for good in that
   term, because a TimeoutNow already sent may still arrive.
4. *L's commit index is complete.* L serves leased reads only after committing an
   entry of term t. By then its commit index covers every write acknowledged by any
   leader. While no other leader exists, only L commits, and L acknowledges a write
   only after its own commit index passes it. A leased read takes that index *before*
   it reads the clock, so a delay between the two only makes the check stricter.

So no other leader is elected before ``T0 + (election_ticks - 1) * tick`` on F's clock.
L's lease ends at ``T0 + (election_ticks - 2) * tick * 0.9`` on its own clock. That is
more than a tick shorter, to absorb the difference in clock rates (NTP keeps it below
0.05%) and scheduling between reading the clock and answering.

What this assumes, and why it is off by default
-----------------------------------------------
- Clocks advance at nearly the same rate. L's clock is ``CLOCK_BOOTTIME`` where there
  is one: it keeps counting while the machine is suspended, so a leader that wakes from
  a suspend finds its lease gone. (A pause after the check only delays the answer: the
  read was current when checked.)
- Every node of a group has the same ``tick_ms`` and ``election_ticks``.
- Every node runs a kvraft with ``vote_lease`` (this one or later): turn the setting on
  only once a rolling upgrade has finished.

ReadIndex needs none of this, so it stays the default.
"""

from __future__ import annotations

import time


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_clock = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
"""The leader's clock for leases: it counts through a suspend where the OS allows."""

LEASE_SAFETY = 0.9
"""The lease is this fraction of ``election_ticks - 2`` ticks (see the module)."""


def lease_seconds(tick_ms: int, election_ticks: int) -> float:
    """How long a quorum round keeps the lease, from when the round was registered."""
    return max(0, election_ticks - 2) * tick_ms / 1000 * LEASE_SAFETY


class Lease:
    """One replica's lease: until when, in which term (runtime side of the argument)."""

    __slots__ = ("duration_s", "until", "term", "renewing", "reads")

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self.until = 0.0
        self.term = 0
        self.renewing = 0
        """ctx of a background renewal round in flight (0: none)."""
        self.reads = 0
        """Reads served under the lease (for status)."""

    @staticmethod
    def now() -> float:
        return _clock()

    def confirmed(self, started: float, term: int) -> None:
        """A quorum round registered at ``started`` in ``term`` was confirmed."""
        until = started + self.duration_s
        if term > self.term:
            self.term, self.until = term, until
        elif term == self.term and until > self.until:
            self.until = until

    def valid(self, term: int, now: float) -> bool:
        return term == self.term and now < self.until

    def wants_renewal(self, now: float) -> bool:
        """Past half its length and no renewal round in flight."""
        return not self.renewing and self.until - now < self.duration_s / 2
