"""The model checker of range migration (kvraft.sim.shards).

Every run is driven by an explicit seed; a failure replays exactly with
``python -m kvraft.sim.shards --seed S --steps 300 [--bug B] -v``.

Seeds are tied to the model's order of random draws: after changing the model (or
``profile_for_seed``), re-check which fixed seeds the ``reclaim-unconfirmed`` variant
fails on (``RECLAIM_BUG_VARIANT_SEEDS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from kvraft.ctrler import CtrlCommand, CtrlOp
from kvraft.kv.commands import Command, Op
from kvraft.sim.shards import (
    BUGS,
    CHECKS,
    Report,
    ShardSimConfig,
    ShardSimViolation,
    ShardWorld,
    run,
)

STEPS = 300
SEEDS = range(1, 21)

RECLAIM_BUG_VARIANT_SEEDS = (1, 3, 4, 6)
"""Some fixed seeds the ``reclaim-unconfirmed`` variant (the reclaim bug as it was: a
group takes a configuration giving back an interval it handed off before the new owner
installed it, deleting the only copy) fails on; the real code passes them."""


def _ok(rep: Report) -> None:
    assert rep.ok, f"{rep.error}\n{rep.state}\n(replay: python -m kvraft.sim.shards " \
                   f"--seed {rep.seed} --steps {rep.steps} -v)"


# --- fixed seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_fixed_seed(seed: int) -> None:
    """The driver exactly as kvraft/runtime/migration.py decides."""
    _ok(run(seed, STEPS))


@pytest.mark.parametrize("seed", RECLAIM_BUG_VARIANT_SEEDS)
def test_reclaim_bug_variant_fails_on_handoff(seed: int) -> None:
    """Seeds the reclaim bug was found on (``test_fixed_seed`` shows the real code passes
    them): without the hold the hand-off is lost."""
    bad = run(seed, STEPS, bug="reclaim-unconfirmed")
    assert bad.check == "handoff", bad.error


def test_faults_and_migrations_happen() -> None:
    total: Counter[str] = Counter()
    for seed in range(1, 6):
        rep = run(seed, STEPS)
        _ok(rep)
        total.update(rep.counts)
    for k in ("configs", "config-applies", "chunks", "session-chunks", "gc-steps", "stale",
              "acked-put", "acked-append", "acked-get", "wrong-group", "crash", "down",
              "lost", "dup", "delayed", "held"):
        assert total[k] > 0, (k, total)


def test_deterministic() -> None:
    a = run(5, 200)
    b = run(5, 200)
    assert a.ok and a.counts == b.counts and a.final_num == b.final_num


# --- scripted: the reclaim case in its smallest form ----------------------------------------


def _swap_back(**overrides: Any) -> ShardWorld:
    """Group 1 owns everything; the range moves to group 2 and straight back while group
    2 is down, and group 1's driver runs three times before group 2 pulled anything (it
    may take configuration 3, and must not take 4 until group 2 installed the range)."""
    cfg = ShardSimConfig(groups=2, initial_groups=0, clients=1, loss=0.0, dup=0.0, delay=0.0,
                         reply_loss=0.0, w_operator=0, w_fault=0, **overrides)
    w = ShardWorld(0, cfg)
    w.ctrl_apply(CtrlCommand(CtrlOp.JOIN, gid=1, members=((1, "a:1"),)))
    w.ctrl_apply(CtrlCommand(CtrlOp.JOIN, gid=2, members=((1, "b:1"),)))
    g1, g2 = w.groups[1], w.groups[2]
    for _ in range(2):
        w.driver_step(g1)
        w.driver_step(g2)
    assert (g1.sh.num, g2.sh.num) == (2, 2)
    for k in ("a0", "c1", "h2"):
        w.propose_client(g1, Command(Op.PUT, k, "v-" + k))
    rid = w.ctrl.latest().ranges[0].id
    w.ctrl_apply(CtrlCommand(CtrlOp.MOVE, gid=2, range_id=rid))
    w.ctrl_apply(CtrlCommand(CtrlOp.MOVE, gid=1, range_id=rid))
    w.go_down(g2, 50, crash=False)
    for _ in range(3):
        w.driver_step(g1)
    return w


DATA = {"a0": "v-a0", "c1": "v-c1", "h2": "v-h2"}


def test_range_moved_away_and_back_before_the_new_owner_pulled() -> None:
    """Group 1 keeps its copy (and stays at configuration 3) until group 2 has it; then
    the range comes back to group 1 and everything settles with every value."""
    w = _swap_back()
    g1, g2 = w.groups[1], w.groups[2]
    assert g1.sh.num == 3, "group 1 took back a range group 2 had not installed"
    assert g1.backend.data == DATA, "group 1 deleted the only copy of the range"
    assert [og.to_gid for og in g1.sh.outgoing] == [2] and not g1.sh.outgoing[0].gc
    assert w.counts["held"] > 0
    w.settle()
    latest = w.ctrl.latest().num
    assert (g1.sh.num, g2.sh.num) == (latest, latest) == (4, 4)
    assert g1.backend.data == DATA
    assert not g2.backend.data
    assert w.reference == DATA
    assert not (g1.sh.pulls or g1.sh.outgoing or g2.sh.pulls or g2.sh.outgoing)


def test_reclaim_bug_is_caught_as_handoff_and_then_liveness() -> None:
    """The same scenario with the reclaim bug: group 1 takes configuration 4 at once,
    deleting the only copy while group 2 still has to pull it."""
    w = _swap_back(bug="reclaim-unconfirmed")
    assert w.groups[1].sh.num == 4 and not w.groups[1].backend.data
    with pytest.raises(ShardSimViolation) as e:
        w.settle()
    assert e.value.check == "handoff"
    with pytest.raises(ShardSimViolation) as e:
        _swap_back(bug="reclaim-unconfirmed", disabled_checks=frozenset({"handoff"}),
                   stall_steps=500).settle()
    assert e.value.check == "liveness"


# --- every checker can fire ------------------------------------------------------------------

CAUGHT: list[tuple[str, frozenset[str], str]] = [
    ("serve-before-install", frozenset(), "exclusive-serving"),
    ("serve-before-install", frozenset({"exclusive-serving", "durability", "exactly-once"}),
     "linearizable-read"),
    ("skip-configs", frozenset(), "config-order"),
    ("gc-unconfirmed", frozenset(), "gc-safety"),
    ("gc-unconfirmed", frozenset({"gc-safety"}), "handoff"),
    ("drop-results", frozenset({"durability", "linearizable-read"}), "exactly-once"),
    ("drop-results", frozenset({"exactly-once", "linearizable-read"}), "durability"),
    ("skip-sessions", frozenset({"durability", "linearizable-read"}), "exactly-once"),
    ("no-gc", frozenset({"liveness"}), "gc"),
    ("never-finish", frozenset({"idempotence"}), "liveness"),
    ("no-cursor-check", frozenset(), "idempotence"),
    ("unsaved-chunks", frozenset(), "persistence"),
    ("snapshot-without-sessions", frozenset(), "determinism"),
    ("reclaim-unconfirmed", frozenset(), "handoff"),
]


@pytest.mark.parametrize("bug,disabled,check", CAUGHT,
                         ids=[f"{b}-{c}" for b, _, c in CAUGHT])
def test_broken_variant_is_caught(bug: str, disabled: frozenset[str], check: str) -> None:
    """Among a few seeds (lossy replies, a busy operator) the broken variant fails, and
    the first failure is the expected check."""
    over: dict[str, Any] = {"bug": bug,
                            "disabled_checks": disabled, "reply_loss": 0.3, "w_operator": 8,
                            "stall_steps": 1000, "gc_drain_steps": 1000}
    for seed in range(1, 31):
        rep = run(seed, STEPS, **over)
        if not rep.ok:
            assert rep.check == check, rep.error
            return
    pytest.fail(f"bug {bug!r} was never caught")


def test_every_check_and_bug_is_exercised() -> None:
    assert {b for b, _, _ in CAUGHT} == set(BUGS)
    assert {c for _, _, c in CAUGHT} == set(CHECKS)


# --- command line ----------------------------------------------------------------------------


def _cli(*args: str, hashseed: str = "0") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.run([sys.executable, "-m", "kvraft.sim.shards", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_many_seeds() -> None:
    r = _cli("--seeds", "3", "--start", "2", "--steps", "100")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 seeds, 3 clean, 0 failed" in r.stdout


def test_cli_replay_failing_seed_is_identical_across_hash_seeds() -> None:
    bug = ("--bug", "reclaim-unconfirmed")
    a = _cli("--seed", "6", "--steps", str(STEPS), *bug, "-v", hashseed="1")
    b = _cli("--seed", "6", "--steps", str(STEPS), *bug, "-v", hashseed="2")
    assert a.returncode == 1 and "[handoff] seed=6" in a.stdout, a.stdout + a.stderr
    strip = [ln for ln in a.stdout.splitlines() if not ln.startswith("FAIL")]
    assert strip == [ln for ln in b.stdout.splitlines() if not ln.startswith("FAIL")]
