"""Tests of the S3 snapshot store against a moto S3 server running in its own process."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from kvraft.storage.s3 import (
    FORMAT_VERSION,
    CorruptSnapshot,
    Manifest,
    S3SnapshotStore,
    SnapshotNotFound,
    SnapshotStoreError,
    StoreUnavailable,
)
from kvraft.testing import FAKE_AWS_ENV, MotoServer

MiB = 2**20
BUCKET = "kvraft-snapshots"
MEMBERSHIP = {"voters": [1, 2, 3]}


class FakeClock:
    """Deterministic ``created_unix`` values: 1000.0, 1010.0, 1020.0, ..."""

    def __init__(self, start: float = 1000.0, step: float = 10.0) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)


def make_store(server: MotoServer, **overrides: Any) -> S3SnapshotStore:
    options: dict[str, Any] = {
        "bucket": BUCKET,
        "prefix": "backups",
        "cluster": "c1",
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "multipart_threshold_bytes": 5 * MiB,
        "multipart_chunk_bytes": 5 * MiB,
        "connect_timeout_s": 2,
        "read_timeout_s": 10,
        "max_attempts": 2,
        "clock": FakeClock(),
    }
    options.update(overrides)
    store = S3SnapshotStore(**options)
    store.ensure_bucket()
    return store


@pytest.fixture
def store(moto_server: MotoServer) -> S3SnapshotStore:
    moto_server.reset()
    return make_store(moto_server)


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    """A raw boto3 client for inspecting and tampering with the bucket."""
    return moto_server.client()


def all_keys(s3: Any) -> list[str]:
    response = s3.list_objects_v2(Bucket=BUCKET)
    return sorted(obj["Key"] for obj in response.get("Contents", ()))


def make_sqlite(path: Path, rows: int, *, salt: str = "") -> Path:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany(
            "INSERT OR REPLACE INTO kv VALUES (?, ?)",
            [(f"key-{i:05d}", f"value-{i}{salt}") for i in range(rows)],
        )
    conn.close()
    return path


def make_blob(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_sqlite(store: S3SnapshotStore, s3: Any, tmp_path: Path) -> None:
    src = make_sqlite(tmp_path / "snap.sqlite", 200)
    manifest, uploaded = store.upload(
        7, str(src), index=42, term=3, membership=MEMBERSHIP, node="node-1"
    )
    assert uploaded
    prefix = "backups/c1/group-7/snapshots/00000000000000000042-00000000000000000003"
    assert manifest.object_key == prefix + ".sqlite"
    assert manifest.manifest_key == prefix + ".manifest.json"
    assert (manifest.cluster, manifest.group, manifest.index, manifest.term) == ("c1", 7, 42, 3)
    assert manifest.membership == MEMBERSHIP and manifest.node == "node-1"
    assert manifest.size == src.stat().st_size and manifest.sha256 == sha256_of(src)
    assert manifest.created_unix == 1000.0 and manifest.created.startswith("1970-01-01T00:16:40")
    assert all_keys(s3) == [prefix + ".manifest.json", prefix + ".sqlite"]

    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest.manifest_key)["Body"].read())
    assert stored["format_version"] == FORMAT_VERSION
    assert Manifest.from_dict(stored) == manifest

    assert store.list(7) == [manifest]
    assert store.latest(7) == manifest
    assert store.latest(8) is None
    assert store.list_groups() == [7]

    dest = tmp_path / "restored.sqlite"
    store.download(manifest, str(dest))
    assert not (tmp_path / "restored.sqlite.partial").exists()
    conn = sqlite3.connect(dest)
    rows = conn.execute("SELECT k, v FROM kv ORDER BY k").fetchall()
    conn.close()
    assert len(rows) == 200 and rows[0] == ("key-00000", "value-0")


def test_unchanged_state_is_not_uploaded_again(
    store: S3SnapshotStore, s3: Any, tmp_path: Path
) -> None:
    src = make_sqlite(tmp_path / "snap.sqlite", 50)
    first, uploaded = store.upload(1, str(src), index=10, term=1, membership=MEMBERSHIP)
    assert uploaded
    keys = all_keys(s3)

    again, uploaded = store.upload(1, str(src), index=11, term=1, membership=MEMBERSHIP)
    assert (again, uploaded) == (first, False)
    assert all_keys(s3) == keys

    make_sqlite(src, 51, salt="-changed")
    second, uploaded = store.upload(1, str(src), index=12, term=2, membership=MEMBERSHIP)
    assert uploaded and second.sha256 != first.sha256
    assert store.list(1) == [first, second]

    # A complete snapshot is never overwritten, even with different bytes.
    make_sqlite(src, 52, salt="-again")
    same_slot, uploaded = store.upload(1, str(src), index=12, term=2, membership=MEMBERSHIP)
    assert (same_slot, uploaded) == (second, False)


def test_multipart_upload_round_trip(store: S3SnapshotStore, s3: Any, tmp_path: Path) -> None:
    src = make_blob(tmp_path / "big.sqlite", 12 * MiB + 12345, seed=1)
    manifest, uploaded = store.upload(2, str(src), index=5, term=1, membership=MEMBERSHIP)
    assert uploaded
    head = s3.head_object(Bucket=BUCKET, Key=manifest.object_key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert head["ContentLength"] == src.stat().st_size

    dest = tmp_path / "restored.sqlite"
    store.download(manifest, str(dest))
    assert dest.read_bytes() == src.read_bytes()


def test_retention_keeps_newest(store: S3SnapshotStore, s3: Any, tmp_path: Path) -> None:
    manifests = []
    for i in range(5):
        src = make_blob(tmp_path / f"s{i}.sqlite", 1000 + i, seed=i)
        manifest, uploaded = store.upload(3, str(src), index=100 * (i + 1), term=1, membership=[])
        assert uploaded
        manifests.append(manifest)
    old_orphan = store.data_key(3, 150, 1)  # failed upload between snapshots 1 and 2
    new_orphan = store.data_key(3, 900, 1)  # upload still in progress
    for key in (old_orphan, new_orphan):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"partial")
    s3.put_object(Bucket=BUCKET, Key="backups/c1/group-3/snapshots/README", Body=b"x")

    deleted = store.apply_retention(3, keep=2)

    expected = {m.object_key for m in manifests[:3]} | {m.manifest_key for m in manifests[:3]}
    assert set(deleted) == expected | {old_orphan}
    assert store.list(3) == manifests[3:]
    remaining = set(all_keys(s3))
    assert new_orphan in remaining and "backups/c1/group-3/snapshots/README" in remaining
    assert not remaining & set(deleted)
    assert store.apply_retention(3, keep=2) == []
    with pytest.raises(ValueError):
        store.apply_retention(3, keep=0)


def test_select_by_index_and_time(store: S3SnapshotStore, tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFound):
        store.select(4)
    made = []
    for i in range(3):
        src = make_blob(tmp_path / f"s{i}.sqlite", 100, seed=10 + i)
        made.append(store.upload(4, str(src), index=10 * (i + 1), term=2, membership=None)[0])
    assert [m.created_unix for m in made] == [1000.0, 1010.0, 1020.0]

    assert store.select(4) == made[2]
    assert store.select(4, index=20) == made[1]
    assert store.select(4, at_or_before_unix=1010.0) == made[1]
    assert store.select(4, at_or_before_unix=1019.9) == made[1]
    assert store.select(4, at_or_before_unix=5000.0) == made[2]
    with pytest.raises(SnapshotNotFound):
        store.select(4, index=15)
    with pytest.raises(SnapshotNotFound):
        store.select(4, at_or_before_unix=999.0)
    with pytest.raises(ValueError):
        store.select(4, index=10, at_or_before_unix=1000.0)


@pytest.mark.parametrize("tamper", ["same-size", "truncated", "longer"])
def test_corrupted_object_is_refused(
    store: S3SnapshotStore, s3: Any, tmp_path: Path, tamper: str
) -> None:
    src = make_sqlite(tmp_path / "snap.sqlite", 100)
    manifest, _ = store.upload(5, str(src), index=9, term=1, membership=MEMBERSHIP)
    data = bytearray(src.read_bytes())
    if tamper == "same-size":
        data[len(data) // 2] ^= 0xFF
    elif tamper == "truncated":
        del data[-100:]
    else:
        data += b"garbage" * 1000
    s3.put_object(Bucket=BUCKET, Key=manifest.object_key, Body=bytes(data))

    dest = tmp_path / "restored.sqlite"
    with pytest.raises(CorruptSnapshot) as info:
        store.download(manifest, str(dest))
    message = str(info.value)
    assert manifest.object_key in message and manifest.sha256 in message
    assert hashlib.sha256(data).hexdigest() in message
    assert f"expected size {manifest.size}" in message and f"got size {len(data)}" in message
    assert not dest.exists() and not (tmp_path / "restored.sqlite.partial").exists()


def test_bad_manifests_are_corrupt(store: S3SnapshotStore, s3: Any, tmp_path: Path) -> None:
    src = make_blob(tmp_path / "a.sqlite", 100, seed=1)
    good, _ = store.upload(6, str(src), index=5, term=1, membership=MEMBERSHIP)
    s3.put_object(Bucket=BUCKET, Key=store.data_key(6, 7, 1), Body=b"data")
    bad_key = store.data_key(6, 7, 1, ".manifest.json")
    s3.put_object(Bucket=BUCKET, Key=bad_key, Body=b'{"format_version": 1, "cluster": ')

    assert store.list(6) == [good]  # the corrupt one is skipped, not fatal
    assert store.latest(6) == good
    with pytest.raises(CorruptSnapshot, match="not valid JSON") as info:
        store.select(6, index=7)
    assert bad_key in str(info.value)

    wrong_version = dict(good.to_dict(), format_version=2)
    with pytest.raises(CorruptSnapshot, match="format_version 2"):
        Manifest.from_json(json.dumps(wrong_version))
    with pytest.raises(CorruptSnapshot, match="'size'"):
        Manifest.from_json(json.dumps(dict(good.to_dict(), size="12")))
    with pytest.raises(CorruptSnapshot, match="JSON object"):
        Manifest.from_json("[1, 2]")
    assert Manifest.from_json(good.to_json()) == good

    # A valid manifest stored at the wrong location is corrupt as well.
    moved_key = store.data_key(6, 8, 1, ".manifest.json")
    s3.put_object(Bucket=BUCKET, Key=store.data_key(6, 8, 1), Body=b"data")
    s3.put_object(Bucket=BUCKET, Key=moved_key, Body=good.to_json().encode())
    with pytest.raises(CorruptSnapshot, match="does not match its location"):
        store.select(6, index=8)

    # A manifest without its data object is not a complete snapshot.
    s3.delete_object(Bucket=BUCKET, Key=store.data_key(6, 8, 1))
    assert store.list(6) == [good]


def test_s3_down_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_blob(tmp_path / "a.sqlite", 2000, seed=3)
    with MotoServer() as server:
        port = server.port
        store = make_store(server, connect_timeout_s=1, read_timeout_s=2, max_attempts=1)
        first, uploaded = store.upload(1, str(src), index=1, term=1, membership=None)
        assert uploaded

        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.upload(1, str(src), index=2, term=1, membership=None)
        with pytest.raises(StoreUnavailable):
            store.list(1)
        with pytest.raises(StoreUnavailable):
            store.download(first, str(tmp_path / "out.sqlite"))
        assert not (tmp_path / "out.sqlite.partial").exists()
        with monkeypatch.context() as patch:  # make the data transfer itself hit the outage
            patch.setattr(store, "_upload_unneeded", lambda *args: None)
            with pytest.raises(StoreUnavailable):
                store.upload(1, str(src), index=2, term=1, membership=None)
        assert time.monotonic() - started < 10

        server.start()
        assert server.port == port and server.running is True
        with pytest.raises(SnapshotStoreError) as info:  # moto restarted empty
            store.upload(1, str(src), index=2, term=1, membership=None)
        assert not isinstance(info.value, StoreUnavailable)
        store.ensure_bucket()
        again, uploaded = store.upload(1, str(src), index=2, term=1, membership=None)
        assert uploaded and store.list(1) == [again]


def recorder() -> tuple[list[tuple[int, int]], Callable[[int, int], None]]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def test_progress_callbacks_increase(store: S3SnapshotStore, tmp_path: Path) -> None:
    for size, index in ((11 * MiB, 1), (300_000, 2)):
        src = make_blob(tmp_path / f"p{index}.sqlite", size, seed=index)
        sent, on_sent = recorder()
        manifest, _ = store.upload(
            9, str(src), index=index, term=1, membership=None, progress=on_sent
        )
        received, on_received = recorder()
        store.download(manifest, str(tmp_path / "out"), progress=on_received)
        for calls in (sent, received):
            assert calls and calls[-1] == (size, size)
            assert all(total == size for _, total in calls)
            done = [d for d, _ in calls]
            assert done == sorted(set(done)), "byte counts must strictly increase"


def test_errors_are_mapped(tmp_path: Path) -> None:
    unused = "http://127.0.0.1:9"  # never contacted: every call below is stubbed
    client = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=unused)
    store = S3SnapshotStore(bucket=BUCKET, prefix="", cluster="c1", client=client)
    assert store.group_prefix(3) == "c1/group-3/snapshots/"
    stubber = Stubber(client)
    stubber.add_client_error("list_objects_v2", "SlowDown", http_status_code=503)
    stubber.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
    with stubber:
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            store.list(1)
        with pytest.raises(SnapshotStoreError, match="AccessDenied") as info:
            store.list(1)
        assert not isinstance(info.value, StoreUnavailable)
    with pytest.raises(ValueError):
        S3SnapshotStore(bucket=BUCKET, prefix="p", cluster="a/b")
    with pytest.raises(ValueError):
        S3SnapshotStore(bucket=BUCKET, prefix="p", cluster="c", multipart_chunk_bytes=MiB)


def test_groups_and_clusters_are_separate(
    store: S3SnapshotStore, moto_server: MotoServer, tmp_path: Path
) -> None:
    other = make_store(moto_server, cluster="c2")
    src = make_blob(tmp_path / "a.sqlite", 100, seed=1)
    for group in (12, 3):
        store.upload(group, str(src), index=1, term=1, membership=None)
    other.upload(5, str(src), index=1, term=1, membership=None)
    assert store.list_groups() == [3, 12]
    assert other.list_groups() == [5]
    assert other.list(3) == []
