"""``shardctl`` and ``kvraft.ShardAdmin`` against a real cluster (3 node processes hosting
the controller and data groups 1 and 2), run as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kvraft import Client, ShardAdmin, errors
from kvraft.admin import AdminError, CommandRefused, Unauthorized, Unreachable
from kvraft.testing.cluster import LocalCluster
from kvraft.testing.moto import free_port
from shardctl.cli import main

KEYS = {k: f"value-of-{k}" for k in
        ["0", "00", "5", "A", "Tz", "U", "Ua", "a", "abc", "m", "mm", "q", "z", "~"]}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("shardctl"), groups=(0, 1, 2))
    try:
        c.start()
        # the bootstrap's rebalance may still be handing a range over: let it finish
        ShardAdmin(c.controller, c.secret).wait(60)
        with Client(c.addr_list) as kv:
            for k, v in KEYS.items():
                kv.put(k, v)
        yield c
    finally:
        c.stop()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KVRAFT_CONTROLLER", "KVRAFT_SECRET", "KVRAFT_CLUSTER_FILE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shardctl(c: LocalCluster, *args: str, secret: str | None = None,
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shardctl`` as a user would."""
    argv = [sys.executable, "-m", "shardctl", "--controller", ",".join(c.controller), *args]
    env = dict(_env(), KVRAFT_SECRET=c.secret if secret is None else secret)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def cli(c: LocalCluster, *args: str) -> Any:
    """Run a command in-process (faster) with ``--json``; returns the parsed output."""
    res = CliRunner().invoke(
        main, ["--controller", ",".join(c.controller), *args, "--json"],
        env={"KVRAFT_CONTROLLER": None, "KVRAFT_SECRET": c.secret}, catch_exceptions=False)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


def show(c: LocalCluster) -> dict[str, Any]:
    doc: dict[str, Any] = cli(c, "show")
    return doc


def range_of(doc: dict[str, Any], key: str) -> dict[str, Any]:
    for r in doc["ranges"]:
        if r["start"] <= key and (r["end"] is None or key < r["end"]):
            return r
    raise AssertionError(f"no range holds {key!r}")


def counts(doc: dict[str, Any]) -> dict[int, int]:
    out = {g["gid"]: 0 for g in doc["groups"]}
    for r in doc["ranges"]:
        out[r["group"]] += 1
    return out


def assert_covering(doc: dict[str, Any]) -> None:
    rs = doc["ranges"]
    assert rs[0]["start"] == "" and rs[-1]["end"] is None
    for a, b in zip(rs, rs[1:], strict=False):
        assert a["end"] == b["start"]


def assert_all_keys(c: LocalCluster) -> None:
    with Client(c.addr_list) as kv:
        for k, v in KEYS.items():
            assert kv.get(k) == v, k


def assert_refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res.stdout
    line = res.stderr.strip()
    assert line and "\n" not in line, res.stderr
    assert "Traceback" not in line
    for w in words:
        assert w in line, line


# --- tests (in order: they share one cluster) ---------------------------------------------


def test_show_lists_ranges_covering_the_key_space(cluster: LocalCluster) -> None:
    doc = show(cluster)
    assert doc["num"] >= 1
    assert_covering(doc)
    assert {r["group"] for r in doc["ranges"]} == {1, 2}
    assert all(r["state"] == "serving" for r in doc["ranges"])
    assert [g["gid"] for g in doc["groups"]] == [1, 2]
    for g in doc["groups"]:
        assert set(g["members"].values()) == set(cluster.addr_list)
        assert g["leader"] in cluster.addr_list
        assert g["config"] == doc["num"]
    assert sum(g["keys"] for g in doc["groups"]) == len(KEYS)
    assert doc["in_flight"] == []
    human = shardctl(cluster, "show")
    assert human.returncode == 0, human.stderr
    assert f"configuration {doc['num']}" in human.stdout
    assert "serving" in human.stdout and "migrations in flight: none" in human.stdout
    assert cluster.secret not in human.stdout + human.stderr


def test_move_waits_and_data_follows(cluster: LocalCluster) -> None:
    before = show(cluster)
    src = range_of(before, "a")
    dst = 1 if src["group"] == 2 else 2
    res = shardctl(cluster, "move", "--key", "a", "--to", str(dst))
    assert res.returncode == 0, res.stderr
    assert "done" in res.stdout
    after = show(cluster)
    assert after["num"] == before["num"] + 1
    moved = range_of(after, "a")
    assert (moved["id"], moved["group"], moved["state"]) == (src["id"], dst, "serving")
    assert moved["version"] > src["version"]
    assert after["in_flight"] == []
    assert_all_keys(cluster)


def test_split_then_merge(cluster: LocalCluster) -> None:
    before = show(cluster)
    assert not any(r["start"] == "m" for r in before["ranges"])
    doc = cli(cluster, "split", "--at", "m")
    assert doc["ok"] and doc["waited"] and doc["num"] == before["num"] + 1
    mid = show(cluster)
    assert len(mid["ranges"]) == len(before["ranges"]) + 1
    assert range_of(mid, "m")["start"] == "m"
    assert_covering(mid)
    doc = cli(cluster, "merge", "--at", "m")
    assert doc["num"] == before["num"] + 2
    after = show(cluster)
    assert len(after["ranges"]) == len(before["ranges"])
    assert_covering(after)
    assert_all_keys(cluster)


def test_rebalance_plans_then_applies(cluster: LocalCluster) -> None:
    doc = show(cluster)
    c = counts(doc)
    if max(c.values()) - min(c.values()) <= 1:  # make it unbalanced first
        r = doc["ranges"][0]
        cli(cluster, "move", "--range", str(r["id"]), "--to", str(3 - r["group"]))
        doc = show(cluster)
        c = counts(doc)
    assert max(c.values()) - min(c.values()) >= 2
    res = shardctl(cluster, "rebalance")
    assert res.returncode == 0, res.stderr
    assert "FROM" in res.stdout and "total: 1 move(s)" in res.stdout
    assert "estimated" in res.stdout
    plan = cli(cluster, "rebalance")
    assert plan["applied"] is False and len(plan["plan"]["moves"]) == 1
    m = plan["plan"]["moves"][0]
    assert {"range_id", "start", "end", "from_gid", "to_gid", "keys", "bytes"} <= set(m)
    assert show(cluster)["num"] == doc["num"]  # planning changes nothing
    applied = cli(cluster, "rebalance", "--apply")
    assert applied["applied"] is True and applied["waited"] is True
    after = show(cluster)
    assert after["num"] == doc["num"] + 1
    c = counts(after)
    assert max(c.values()) - min(c.values()) <= 1
    assert after["in_flight"] == [] and all(r["state"] == "serving" for r in after["ranges"])
    assert cli(cluster, "rebalance")["plan"]["moves"] == []
    assert_all_keys(cluster)


def test_refused_commands_exit_nonzero_with_one_line(cluster: LocalCluster) -> None:
    num = show(cluster)["num"]
    assert_refused(shardctl(cluster, "leave", "99"), "unknown group 99")
    assert_refused(shardctl(cluster, "move", "--key", "a", "--to", "42"), "unknown group 42")
    assert_refused(shardctl(cluster, "merge", "--at", ""), "left neighbour")
    assert_refused(shardctl(cluster, "move", "--to", "1"), "--key")
    assert show(cluster)["num"] == num


def test_wrong_secret_is_refused(cluster: LocalCluster) -> None:
    num = show(cluster)["num"]
    res = shardctl(cluster, "move", "--key", "a", "--to", "1", secret="not-the-secret")
    assert_refused(res, "secret")
    assert "not-the-secret" not in res.stderr
    assert show(cluster)["num"] == num


def test_unreachable_controller(cluster: LocalCluster) -> None:
    res = subprocess.run([sys.executable, "-m", "shardctl", "--controller",
                          f"127.0.0.1:{free_port()}", "--request-timeout", "0.5", "show"],
                         capture_output=True, text=True, timeout=60, env=_env())
    assert_refused(res, "unreachable")


def test_wait_when_idle(cluster: LocalCluster) -> None:
    res = shardctl(cluster, "wait", "--timeout", "30")
    assert res.returncode == 0, res.stderr
    assert cli(cluster, "wait") == {"ok": True, "in_flight": []}


def test_join_resolves_node_ids_and_is_idempotent(cluster: LocalCluster) -> None:
    num = show(cluster)["num"]
    # group 2 again with the same members, given as plain HOST:PORT: ids come from
    # each node's status, so nothing changes.
    doc = cli(cluster, "join", "2", *cluster.addr_list)
    assert doc["changed"] is False and doc["num"] == num
    doc = cli(cluster, "join", "2", *(f"{i}={a}" for i, a in cluster.addrs.items()))
    assert doc["changed"] is False


def test_defaults_from_kvraft_up_cluster_file(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "kvraft-data").mkdir()
    (tmp_path / "kvraft-data" / "cluster.json").write_text(json.dumps({
        "secret": cluster.secret, "groups": [0, 1, 2],
        "nodes": {str(i): a for i, a in cluster.addrs.items()}}))
    res = subprocess.run([sys.executable, "-m", "shardctl", "show", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=_env())
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["groups"][0]["keys"] is not None  # the secret was read too
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "shardctl", "show"], cwd=empty,
                         capture_output=True, text=True, timeout=60, env=_env())
    assert_refused(res, "--controller")


def test_admin_api(cluster: LocalCluster) -> None:
    admin = ShardAdmin(",".join(cluster.controller), cluster.secret, timeout_s=5.0)
    cfg = admin.config()
    assert admin.config(cfg["num"]) == cfg
    view = admin.group_view(1)
    assert view["role"] == "leader" and view["shards"]["num"] == cfg["num"]
    assert admin.in_flight() == []
    admin.wait(10)
    with pytest.raises(CommandRefused, match="unknown group 99") as ei:
        admin.command({"op": "leave", "gid": 99})
    assert isinstance(ei.value, errors.KvraftError)
    with pytest.raises(CommandRefused):
        admin.config(10**9)
    with pytest.raises(Unauthorized):
        ShardAdmin(cluster.controller, "wrong").plan(False)
    with pytest.raises(Unreachable):
        ShardAdmin(f"127.0.0.1:{free_port()}", None, timeout_s=0.3).config()
    with pytest.raises(AdminError):
        ShardAdmin("no-port", None)
