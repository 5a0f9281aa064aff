"""A deterministic, seeded simulator of a kvraft Raft group, with safety checkers.

One seed drives everything (network delays and faults, disk latency, crashes,
snapshots and their streams, clients, each core's election timeouts), so any failure
replays exactly with
``python -m kvraft.sim --seed S -v``. See ``docs/simulator.md``.
"""

from kvraft.sim.checkers import Checker, SafetyViolation
from kvraft.sim.cluster import Cluster
from kvraft.sim.config import FAULT_KINDS, STEPS_PER_TICK, SimConfig, profile_for_seed
from kvraft.sim.runner import SeedResult, make_cluster, run_seed

__all__ = [
    "FAULT_KINDS",
    "STEPS_PER_TICK",
    "Checker",
    "Cluster",
    "SafetyViolation",
    "SeedResult",
    "SimConfig",
    "make_cluster",
    "profile_for_seed",
    "run_seed",
]
