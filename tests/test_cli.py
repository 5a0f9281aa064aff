"""The command line as a user runs it: kvraft up, get/put/append/delete, status, bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvraft.testing import free_port


def _kvraft(*args: str, timeout_s: float = 60, data: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``kvraft ARGS``; with ``data``, as run beside that ``kvraft up`` directory (it finds
    the cluster's CA, certificates and admin token there)."""
    env = dict(os.environ, KVRAFT_DATA_DIR=str(data)) if data else None
    return subprocess.run([sys.executable, "-m", "kvraft", *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env)


def _up(data: Path, base: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kvraft", "up", "--data-dir", str(data),
                             "--base-port", str(base)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait_ready(proc: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops the cluster" in line:
            return lines
    raise AssertionError("kvraft up did not come up:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "stopped." in out, out
    assert proc.returncode == 0


def test_up_ops_status_bench_and_restart(tmp_path: Path) -> None:
    base = free_port()
    while base + 3 > 65000:
        base = free_port()
    addrs = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    data = tmp_path / "data"
    proc = _up(data, base)
    try:
        out = "".join(_wait_ready(proc))
        assert f"https://127.0.0.1:{base}" in out and "leader: 127.0.0.1:" in out
        assert "admin token" in out and (data / "admin.token").exists()
        assert oct((data / "admin.token").stat().st_mode & 0o777) == "0o600"
        # from another directory, without the cluster's CA and token: refused, not hung
        refused = _kvraft("get", "greeting", "--addr", addrs, "--timeout", "3")
        assert refused.returncode == 1, refused
        assert _kvraft("put", "greeting", "hello", "--addr", addrs, data=data).stdout.strip() == "OK"
        assert _kvraft("append", "greeting", ", world", "--addr", addrs, data=data).returncode == 0
        assert _kvraft("get", "greeting", "--addr", addrs, data=data).stdout.strip() == "hello, world"
        absent = _kvraft("get", "nothing", "--addr", addrs, data=data)
        assert absent.returncode == 1 and "absent" in absent.stderr
        assert _kvraft("put", "doomed", "x", "--addr", addrs, data=data).returncode == 0
        assert _kvraft("delete", "doomed", "--addr", addrs, data=data).stdout.strip() == "deleted"
        st = _kvraft("status", "--addr", addrs, data=data)
        assert st.returncode == 0 and "leader is node" in st.stdout, st.stdout
        docs = json.loads(_kvraft("status", "--json", "--addr", addrs, data=data).stdout)
        leaders: dict[str, int] = {}
        assert all("groups" in d for d in docs.values()), {
            a: d for a, d in docs.items() if "groups" not in d}
        for d in docs.values():
            for gid, g in d["groups"].items():
                leaders[gid] = leaders.get(gid, 0) + (g["role"] == "leader")
        # the controller and the two data groups of the embedded default, one leader each
        assert leaders == {"0": 1, "1": 1, "2": 1}, leaders
        shards = {gid: g["shards"] for d in docs.values() for gid, g in d["groups"].items()
                  if g["role"] == "leader" and gid != "0"}
        assert all(len(v["ranges"]) == 1 and v["ranges"][0]["state"] == "serving"
                   for v in shards.values()), shards
        b = _kvraft("bench", "--addr", addrs, "--n", "200", "-c", "4", "--reads", "0.5",
                    "--keys", "50", "--json", data=data)
        row = json.loads(b.stdout.strip().splitlines()[-1])
        assert b.returncode == 0 and row["ops"] == 200 and row["errors"] == 0
    finally:
        _stop(proc)
    proc = _up(data, base)  # the same directory brings the same cluster back
    try:
        _wait_ready(proc)
        assert _kvraft("get", "greeting", "--addr", addrs, data=data).stdout.strip() == "hello, world"
    finally:
        _stop(proc)


def test_client_errors_are_distinct(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    r = _kvraft("get", "k", "--addr", nobody, "--timeout", "0.5")
    assert r.returncode == 1 and "Unavailable" in r.stderr
    r = _kvraft("get", "k", "--addr", "not-an-address")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
