"""S3 backups and restores against a moto server in its own process (never AWS)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft import Client
from kvraft.storage.s3 import S3SnapshotStore
from kvraft.testing import FAKE_AWS_ENV, MotoServer, wait_for
from kvraft.testing.cluster import LocalCluster

BUCKET = "kvraft-backups"


@pytest.fixture
def s3() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def _cluster(root: Path, s3: MotoServer, name: str, interval_s: float = 3600,
             snapshot_entries: int = 200, catchup_entries: int | None = None,
             first_upload_s: float | None = None) -> LocalCluster:
    """``first_upload_s``: when the leader's first periodic upload comes (the node's
    default, 10 s after it starts, unless given)."""
    catchup = [] if catchup_entries is None else [
        "--snapshot-catchup-entries", str(catchup_entries)]
    first = [] if first_upload_s is None else ["--backup-retry-s", str(first_upload_s)]
    return LocalCluster(root, nodes=3, env=s3.env(os.environ), extra_args=[
        "--snapshot-entries", str(snapshot_entries), *catchup, "--s3-bucket", BUCKET,
        "--s3-endpoint-url", s3.endpoint_url, "--cluster-name", name, "--backup-interval-s",
        str(interval_s), *first])


def _kvraft(s3: MotoServer, *args: str, secret: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = s3.env(os.environ)
    if secret:
        env["KVRAFT_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "kvraft", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _s3_args(s3: MotoServer, name: str) -> list[str]:
    return ["--bucket", BUCKET, "--endpoint-url", s3.endpoint_url, "--cluster", name]


_wait = wait_for


def test_backup_then_lose_everything_then_restore(tmp_path: Path, s3: MotoServer) -> None:
    c = _cluster(tmp_path / "c", s3, "lost")
    c.start()
    try:
        c.wait_for_leader()
        with Client(c.addr_list) as cl:
            for i in range(300):
                cl.put(f"k{i}", f"v{i}")
            cl.append("k0", "+a")
        backup = ["backup", "--addr", ",".join(c.addr_list), "--group", "0", "--group", "1"]
        r = _kvraft(s3, *backup, secret=c.secret)
        assert r.returncode == 0, r.stderr
        assert "group 0: " in r.stdout and "group 1: " in r.stdout and "uploaded" in r.stdout
        r = _kvraft(s3, *backup, secret=c.secret)
        assert r.returncode == 0 and r.stdout.count("unchanged") == 2, r.stdout + r.stderr
        with Client(c.addr_list) as cl:
            cl.put("after-backup", "x")  # not in the snapshot
    finally:
        c.stop()
    listing = _kvraft(s3, "backup", "list", *_s3_args(s3, "lost"))
    assert listing.returncode == 0 and "sqlite" not in listing.stderr
    assert len([ln for ln in listing.stdout.splitlines() if ln.strip().startswith("1 ")]) == 1
    assert len([ln for ln in listing.stdout.splitlines() if ln.strip().startswith("0 ")]) == 1
    for i in c.ids:
        shutil.rmtree(c.data_dir(i))
    for i in c.ids:  # the whole sharded cluster: the controller and the data group
        r = _kvraft(s3, "restore", *_s3_args(s3, "lost"), "--id", str(i), "--data-dir",
                    str(c.data_dir(i)), "--all-groups", "--whole-group")
        assert r.returncode == 0, r.stderr
        assert "restored group 0" in r.stdout and "restored group 1" in r.stdout, r.stdout
    c.bootstrap_on_start = False  # the controller's configuration comes from S3 too
    c.start()
    c.wait_shards(1, 1)  # group 1 serves by the restored configuration, nothing rebuilt
    try:
        c.wait_for_leader()
        with Client(c.addr_list) as cl:
            assert cl.get("k0") == "v0+a"
            assert [cl.get(f"k{i}") for i in range(1, 300)] == [f"v{i}" for i in range(1, 300)]
            assert cl.get("after-backup") is None
            cl.put("new", "y")
            assert cl.get("new") == "y"
    finally:
        c.stop()


def test_corrupted_object_is_refused(tmp_path: Path, s3: MotoServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAKE_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    c = _cluster(tmp_path / "c", s3, "corrupt")
    c.start()
    try:
        c.wait_for_leader()
        with Client(c.addr_list) as cl:
            cl.put("k", "v")
        assert _kvraft(s3, "backup", "--addr", ",".join(c.addr_list),
                       secret=c.secret).returncode == 0
    finally:
        c.stop()
    store = S3SnapshotStore(bucket=BUCKET, prefix="kvraft", cluster="corrupt",
                            endpoint_url=s3.endpoint_url)
    m = store.latest(1)
    assert m is not None
    s3.client().put_object(Bucket=BUCKET, Key=m.object_key, Body=b"not the snapshot")
    target = tmp_path / "restored"
    for extra in (["--id", "1", "--whole-group"], ["--id", "9"]):
        r = _kvraft(s3, "restore", *_s3_args(s3, "corrupt"), *extra, "--data-dir", str(target))
        assert r.returncode != 0
        assert "sha256" in r.stderr and "refused" in r.stderr, r.stderr
        assert not (target / "group-1").exists()
    # Neither a voter under its old id into a live group, nor a stranger into a rebuild.
    r = _kvraft(s3, "restore", *_s3_args(s3, "corrupt"), "--id", "2", "--data-dir", str(target))
    assert r.returncode != 0 and "is a voter of group 1" in r.stderr, r.stderr
    r = _kvraft(s3, "restore", *_s3_args(s3, "corrupt"), "--id", "9", "--whole-group",
                "--data-dir", str(target))
    assert r.returncode != 0 and "not a member" in r.stderr, r.stderr
    assert not (target / "group-1").exists()


def test_s3_down_and_back(tmp_path: Path, s3: MotoServer) -> None:
    c = _cluster(tmp_path / "c", s3, "flaky", interval_s=1.0)
    c.start()
    try:
        lead = c.wait_for_leader()

        def backup() -> dict[str, int]:
            doc = c._request(c.leader() or lead, "GET", "/v1/status")[1]
            return doc["backup"]  # type: ignore[no-any-return]

        with Client(c.addr_list) as cl:
            cl.put("a", "1")
            _wait(lambda: backup()["uploads"] >= 1, 30, "the first upload")
            _wait(lambda: backup()["skipped_unchanged"] >= 1, 30, "an unchanged skip")
            s3.stop()
            for i in range(50):  # the cluster keeps serving without S3
                cl.put(f"down{i}", str(i))
            _wait(lambda: backup()["failures"] >= 1, 30, "a counted failure")
            uploads = backup()["uploads"]
            s3.start()
            cl.put("b", "2")
            _wait(lambda: backup()["uploads"] > uploads, 30, "uploads to resume")
            assert cl.get("down49") == "49"
    finally:
        c.stop()


def test_replacement_node_restored_from_s3_catches_up(tmp_path: Path, s3: MotoServer) -> None:
    """A SIGKILLed node whose disk is lost is replaced by a NEW id restored from S3: it
    joins as a learner, catches up from the snapshot and the tail of the leader's log
    (no snapshot streamed), and is promoted; the old id is removed and can no longer
    vote, and restoring it under its old id is refused."""
    # A snapshot every 250 entries keeping 50 below it: the backup (taken at ~301) compacts
    # the live logs so they no longer hold the early entries, while the 100 writes made
    # after it are too few for another snapshot, so the log still covers what a node
    # restored at the backup's index lacks.
    # No periodic upload: it would take a snapshot past the backup's, and the live logs
    # would then no longer reach down to the backup (seen on a loaded machine, where the
    # first periodic upload, 10 s after the start by default, came after the backup).
    c = _cluster(tmp_path / "c", s3, "replace", snapshot_entries=250, catchup_entries=50,
                 first_upload_s=3600)
    c.start()
    try:
        lead = c.wait_for_leader()
        victim = next(i for i in c.ids if i != lead)
        live = [i for i in c.ids if i != victim]
        with Client(c.addr_list, timeout_s=30.0) as cl:
            for i in range(300):
                cl.put(f"k{i}", f"v{i}")
            r = _kvraft(s3, "backup", "--addr", ",".join(c.addr_list), secret=c.secret)
            assert r.returncode == 0, r.stderr
            found = re.search(r"group 1: snapshot (\d+) ", r.stdout)
            assert found, r.stdout
            backup_index = int(found[1])
            c.kill(victim)
            shutil.rmtree(c.data_dir(victim))  # the node's disk is lost
            for i in range(300, 400):  # the group moves on without it
                cl.put(f"k{i}", f"v{i}")
            # Precondition: no live log holds entry 1 any more, so a node that starts
            # empty could only catch up by a snapshot streamed from the leader; but every
            # live log still reaches down to the backup, so the restored node need not.
            _wait(lambda: all((c.status(i) or {}).get("snapshot_index", 0) > 0 for i in live),
                  60, "the live nodes to compact their logs")
            for i in live:
                st = c.status(i)
                assert st is not None and 0 < st["snapshot_index"] <= backup_index, (i, st)
            # The old id cannot come back from S3 while the group lives...
            r = _kvraft(s3, "restore", *_s3_args(s3, "replace"), "--id", str(victim),
                        "--data-dir", str(c.data_dir(victim)))
            assert r.returncode != 0 and f"node {victim} is a voter" in r.stderr, r.stderr
            # ...a new id does: restore, start with --join, add (learner, then voter).
            new = c.new_node(via=lead, start=False)
            r = _kvraft(s3, "restore", *_s3_args(s3, "replace"), "--id", str(new),
                        "--data-dir", str(c.data_dir(new)), "--index", str(backup_index))
            assert r.returncode == 0, r.stderr
            assert "serve --join" in r.stdout, r.stdout
            c.start_node(new)
            out = c.member("remove", victim)  # the dead member goes first: 2 of 2 live
            assert out["voters"] == live, out
            out = c.member("add", new)
            assert out["voters"] == sorted([*live, new]), out
            commit = c.status(c.wait_for_leader())["commit"]  # type: ignore[index]
            c.wait_applied([new], commit, timeout_s=60)
            started = re.findall(rf"group 1 replica {new} started: .* applied (\d+)",
                                 c.log_path(new).read_text())
            assert started == [str(backup_index)], started
            st = c.status(new)
            assert st is not None and st["role"] == "follower" and st["member"], st
            # It caught up from the leader's log alone: no snapshot was streamed to it.
            assert st["snapshot_index"] == backup_index, st
            assert st["snapshot"]["installed"] == 0, st
            assert st["applied"] >= commit > backup_index, st
            cl.put("after", "1")
            commit = c.status(c.wait_for_leader())["commit"]  # type: ignore[index]
            c.wait_applied([new], commit, timeout_s=60)
            # The old id is no voter any more: the group's majority is over the new set.
            doc = c.members_of(1, via=c.wait_for_leader())
            assert victim not in doc["voters"] and new in doc["voters"], doc
            # Restoring that (now voting) id from the old backup again is caught at start:
            # the backup does not list it, but the live group does.
            c.kill(new, signal.SIGTERM)
            shutil.copytree(c.data_dir(new), tmp_path / "kept")
            shutil.rmtree(c.data_dir(new))
            r = _kvraft(s3, "restore", *_s3_args(s3, "replace"), "--id", str(new),
                        "--index", str(backup_index), "--data-dir", str(c.data_dir(new)))
            assert r.returncode == 0, r.stderr
            c.start_node(new)
            assert c.procs[new].wait(timeout=60) != 0
            assert f"node {new} is still a member of group 1" in c.log_path(new).read_text()
            shutil.rmtree(c.data_dir(new))
            shutil.copytree(tmp_path / "kept", c.data_dir(new))
        # Read the data from the new node's own state.db, not through the leader.
        db = c.data_dir(new) / "group-1" / "state.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            kv = dict(conn.execute("SELECT k, v FROM kv").fetchall())
            applied = int(conn.execute(
                "SELECT v FROM meta WHERE k = 'applied_index'").fetchone()[0])
        finally:
            conn.close()
        assert applied >= commit
        assert kv == {**{f"k{i}": f"v{i}" for i in range(400)}, "after": "1"}
    finally:
        c.stop()
