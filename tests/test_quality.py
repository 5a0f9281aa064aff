"""Lint (ruff) over the repository and strict type-checking (mypy) of the pure core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff_clean() -> None:
    r = _run("ruff", "check", "kvraft", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_pure_core() -> None:
    r = _run("mypy", "--strict", "kvraft/raft", "kvraft/kv", "kvraft/ctrler", "kvraft/check")
    assert r.returncode == 0, r.stdout + r.stderr
