"""Snapshot store on S3 (or any S3-compatible endpoint) for kvraft.

Object layout, under ``bucket`` and an optional ``prefix``::

    <prefix>/<cluster>/group-<gid>/snapshots/<index:020d>-<term:020d>.sqlite
    <prefix>/<cluster>/group-<gid>/snapshots/<index:020d>-<term:020d>.manifest.json

Zero-padding makes lexical key order equal to (index, term) order.  The
manifest is written only after the data object is complete, so a manifest's
presence means the snapshot is complete; objects without a valid manifest are
ignored when listing and removed by retention once older than the oldest kept
snapshot.

:class:`Manifest`, the error classes and the key layout are defined in
:mod:`kvraft.storage.s3_manifest` and re-exported here.

Every S3 or network failure surfaces as a :class:`SnapshotStoreError` (a
:class:`kvraft.errors.KvraftError`); transient ones (unreachable endpoint,
timeouts, throttling, HTTP 5xx) as :class:`StoreUnavailable`, so a replica can
count, log and retry later instead of crashing.  Local file errors are plain
:class:`OSError`, bad arguments :class:`ValueError`.  Methods block (use
``asyncio.to_thread`` from async code); a store may be shared between threads.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from kvraft.storage.s3_manifest import (
    DATA_SUFFIX,
    GROUP_RE,
    MANIFEST_SUFFIX,
    NAME_RE,
    check_non_negative,
    cluster_key_prefix,
    group_key_prefix,
    snapshot_key,
)

# Part of this module's API, defined in s3_manifest.
from kvraft.storage.s3_manifest import FORMAT_VERSION as FORMAT_VERSION
from kvraft.storage.s3_manifest import CorruptSnapshot as CorruptSnapshot
from kvraft.storage.s3_manifest import Manifest as Manifest
from kvraft.storage.s3_manifest import SnapshotNotFound as SnapshotNotFound
from kvraft.storage.s3_manifest import SnapshotStoreError as SnapshotStoreError
from kvraft.storage.s3_manifest import StoreUnavailable as StoreUnavailable
from kvraft.storage.snapshots import fsync_dir, sha256_file

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 2**20
"""S3's minimum size of every multipart part except the last."""

ProgressCallback = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``; ``bytes_done`` strictly increases."""

_IO_CHUNK = 2**20
_MAX_MANIFEST_BYTES = 2**20
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_UNAVAILABLE_CODES = frozenset(
    "InternalError RequestTimeout RequestTimeoutException ServiceUnavailable SlowDown Throttling "
    "ThrottlingException RequestLimitExceeded".split()
)


def _error_code(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _translate(exc: BaseException, what: str) -> SnapshotStoreError:
    """Map a boto3/botocore exception to the store's error hierarchy."""
    if isinstance(exc, S3UploadFailedError) and isinstance(
        exc.__context__, ClientError | BotoCoreError
    ):
        exc = exc.__context__
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if status >= 500 or code in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"{what}: S3 unavailable ({code or 'error'}, HTTP {status})")
        if code in _NOT_FOUND_CODES:
            return SnapshotNotFound(f"{what}: object not found ({code})")
        return SnapshotStoreError(f"{what}: S3 error {code} (HTTP {status}): {message}")
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return StoreUnavailable(f"{what}: S3 endpoint unreachable: {exc}")
    return SnapshotStoreError(f"{what}: {exc}")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Re-raise boto3/botocore failures inside the block as :class:`SnapshotStoreError`."""
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise _translate(exc, what) from exc


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class _Progress:
    """Thread-safe adapter from byte deltas to strictly increasing ``progress(done, total)``."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self._total, self._callback = total, callback
        self._lock = threading.Lock()
        self._done, self._reported = 0, -1

    def add(self, delta: int) -> None:
        """Account ``delta`` bytes (negative when a part is retried); report any progress."""
        with self._lock:
            self._done += delta
            self._report(min(max(self._done, 0), self._total))

    def finish(self) -> None:
        """Report completion unless already reported."""
        with self._lock:
            self._report(self._total)

    def _report(self, done: int) -> None:
        if self._callback is not None and done > self._reported:
            self._reported = done
            self._callback(done, self._total)


@dataclasses.dataclass
class _Scan:
    """One listing of a group: valid manifests plus every recognised key."""

    manifests: list[Manifest]
    corrupt: dict[tuple[int, int], CorruptSnapshot]
    keys: dict[str, tuple[int, int]]


class S3SnapshotStore:
    """Upload, list, select, download and prune SQLite snapshots of one kvraft cluster.

    Credentials come from boto3's default chain (environment, shared config,
    instance role).  ``endpoint_url`` points the client at an S3-compatible
    server (path-style addressing is then used); ``client`` injects a
    ready-made boto3 S3 client instead.  Timeouts and ``max_attempts`` bound
    how long a call can take when S3 is down.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        cluster: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold_bytes: int = 64 * 2**20,
        multipart_chunk_bytes: int = 16 * 2**20,
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
        max_attempts: int = 3,
        client: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must not be empty")
        if not cluster or "/" in cluster:
            raise ValueError(f"cluster must be a non-empty name without '/': {cluster!r}")
        if multipart_chunk_bytes < MIN_PART_BYTES:
            raise ValueError(
                f"multipart_chunk_bytes must be >= {MIN_PART_BYTES} (S3 minimum part size)"
            )
        if multipart_threshold_bytes < 1 or max_attempts < 1:
            raise ValueError("multipart_threshold_bytes and max_attempts must be >= 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cluster = cluster
        self._clock = clock
        self._cluster_prefix = cluster_key_prefix(self.prefix, cluster)
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=4,
            use_threads=True,
        )
        if client is None:
            config = Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self._client = client

    def group_prefix(self, group: int) -> str:
        """Key prefix (ending in ``/``) under which ``group``'s snapshots live."""
        return group_key_prefix(self._cluster_prefix, group)

    def data_key(self, group: int, index: int, term: int, suffix: str = DATA_SUFFIX) -> str:
        """Key of the data object (or, with ``suffix=".manifest.json"``, the manifest)."""
        return snapshot_key(self._cluster_prefix, group, index, term, suffix)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (meant for local/test endpoints)."""
        with _s3_errors(f"ensure bucket {self.bucket}"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 403:  # a role scoped to objects under a prefix (no bare
                    return         # ListBucket): the bucket exists; uploads will tell
                if status != 404 and code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            region = self._client.meta.region_name
            if region and region not in ("us-east-1", "aws-global"):
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:
                if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":
                    raise

    def _list(self, prefix: str, delimiter: str = "") -> tuple[list[str], list[str]]:
        """All keys and common prefixes (with ``delimiter``) under ``prefix``."""
        keys: list[str] = []
        prefixes: list[str] = []
        with _s3_errors(f"list {self._url(prefix)}"):
            paginator = self._client.get_paginator("list_objects_v2")
            extra = {"Delimiter": delimiter} if delimiter else {}
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra):
                keys.extend(obj["Key"] for obj in page.get("Contents", ()))
                prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        return keys, prefixes

    def _read_manifest(self, group: int, index: int, term: int) -> Manifest:
        """Fetch and validate one manifest, including that it matches its location."""
        key = self.data_key(group, index, term, MANIFEST_SUFFIX)
        source = self._url(key)
        with _s3_errors(f"read manifest {source}"):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                raw = body.read(_MAX_MANIFEST_BYTES + 1)
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise CorruptSnapshot(f"{source}: manifest larger than {_MAX_MANIFEST_BYTES} bytes")
        m = Manifest.from_json(raw, source=source)
        expected = (self.cluster, group, index, term, self.data_key(group, index, term))
        if (m.cluster, m.group, m.index, m.term, m.object_key) != expected:
            raise CorruptSnapshot(
                f"{source}: manifest describes {m.object_key!r} of cluster {m.cluster!r} "
                f"group {m.group}, which does not match its location"
            )
        return m

    def _scan(self, group: int) -> _Scan:
        """List ``group`` and load every manifest whose data object exists."""
        prefix = self.group_prefix(group)
        keys: dict[str, tuple[int, int]] = {}
        manifest_ids: list[tuple[int, int]] = []
        data_ids: set[tuple[int, int]] = set()
        for key in self._list(prefix)[0]:
            match = NAME_RE.match(key[len(prefix) :])
            if match is None:
                continue
            ident = (int(match.group(1)), int(match.group(2)))
            keys[key] = ident
            if match.group(3) == DATA_SUFFIX:
                data_ids.add(ident)
            else:
                manifest_ids.append(ident)
        scan = _Scan(manifests=[], corrupt={}, keys=keys)
        for index, term in sorted(manifest_ids):
            if (index, term) not in data_ids:
                log.warning(
                    "ignoring manifest without data object: %s",
                    self._url(self.data_key(group, index, term, MANIFEST_SUFFIX)),
                )
                continue
            try:
                scan.manifests.append(self._read_manifest(group, index, term))
            except CorruptSnapshot as exc:
                log.warning("ignoring corrupt snapshot manifest: %s", exc)
                scan.corrupt[(index, term)] = exc
            except SnapshotNotFound:
                continue  # deleted concurrently (retention by another node)
        return scan

    def list(self, group: int) -> builtins.list[Manifest]:
        """Complete snapshots of ``group``, oldest first.

        Snapshots whose manifest is missing, corrupt or lacks its data object
        are skipped (corrupt ones are logged); use :meth:`select` with
        ``index=`` to get a :class:`CorruptSnapshot` error for a specific one.
        """
        return self._scan(group).manifests

    def list_groups(self) -> builtins.list[int]:
        """Group ids that have any object under this cluster's prefix, ascending."""
        groups: set[int] = set()
        for prefix in self._list(self._cluster_prefix, delimiter="/")[1]:
            match = GROUP_RE.match(prefix[len(self._cluster_prefix) :])
            if match is not None:
                groups.add(int(match.group(1)))
        return sorted(groups)

    def latest(self, group: int) -> Manifest | None:
        """The newest complete snapshot of ``group``, or ``None`` if there is none."""
        manifests = self.list(group)
        return manifests[-1] if manifests else None

    def select(
        self, group: int, *, index: int | None = None, at_or_before_unix: float | None = None
    ) -> Manifest:
        """Choose a snapshot to restore.

        ``index``: the snapshot at exactly that index (highest term if several);
        a corrupt manifest at that index raises :class:`CorruptSnapshot`.
        ``at_or_before_unix``: the highest-index snapshot whose ``created_unix``
        is at or before that time.  Neither: the latest.  Giving both is a
        :class:`ValueError`; no match raises :class:`SnapshotNotFound`.
        """
        if index is not None and at_or_before_unix is not None:
            raise ValueError("give at most one of index and at_or_before_unix")
        scan = self._scan(group)
        candidates = scan.manifests
        if index is not None:
            candidates = [m for m in candidates if m.index == index]
            corrupt = [exc for (i, _term), exc in sorted(scan.corrupt.items()) if i == index]
            if not candidates and corrupt:
                raise corrupt[-1]
        elif at_or_before_unix is not None:
            candidates = [m for m in candidates if m.created_unix <= at_or_before_unix]
        if not candidates:
            raise SnapshotNotFound(
                f"no complete snapshot for cluster {self.cluster!r} group {group} "
                f"(index={index}, at_or_before_unix={at_or_before_unix}) in {self._url(self.group_prefix(group))}"
            )
        return candidates[-1]

    def upload(
        self,
        group: int,
        path: str,
        *,
        index: int,
        term: int,
        membership: Any,
        node: str = "",
        progress: ProgressCallback | None = None,
    ) -> tuple[Manifest, bool]:
        """Upload the snapshot file at ``path`` taken at ``(index, term)``.

        The file is hashed (streamed) first.  If the newest complete snapshot
        has the same size and sha256, or a complete snapshot already exists at
        ``(index, term)``, nothing is uploaded and ``(that manifest, False)`` is
        returned; complete snapshots are never overwritten.  Otherwise the file
        is streamed to S3 (multipart above the configured threshold), then the
        manifest is written, and ``(new manifest, True)`` is returned.

        ``path`` must not change while uploading (it is checked afterwards).
        Only one node per group should upload at a time (e.g. the leader).
        ``membership`` must be JSON-serialisable.  ``progress`` is called from
        transfer threads with ``(bytes_sent, size)``.
        """
        check_non_negative(group=group, index=index, term=term)
        try:
            json.dumps(membership)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"membership is not JSON-serialisable: {exc}") from exc
        before = os.stat(path)
        digest, size = sha256_file(Path(path))
        existing = self._upload_unneeded(group, index, term, size, digest)
        if existing is not None:
            return existing, False
        key = self.data_key(group, index, term)
        self._transfer(path, key, size, digest, progress)
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self._delete_keys([key])
            raise SnapshotStoreError(f"{path} changed while being uploaded to {self._url(key)}")
        now = self._clock()
        created = _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat()
        manifest = Manifest(
            cluster=self.cluster,
            group=group,
            index=index,
            term=term,
            membership=membership,
            size=size,
            sha256=digest,
            created_unix=now,
            created=created,
            object_key=key,
            node=node,
        )
        with _s3_errors(f"write manifest {self._url(manifest.manifest_key)}"):
            body = manifest.to_json().encode()
            self._client.put_object(Bucket=self.bucket, Key=manifest.manifest_key, Body=body)
        return manifest, True

    def _upload_unneeded(
        self, group: int, index: int, term: int, size: int, digest: str
    ) -> Manifest | None:
        """The existing manifest that makes uploading this snapshot unnecessary, if any."""
        manifests = self.list(group)
        for existing in manifests:
            if (existing.index, existing.term) == (index, term):
                log.info("snapshot %s exists; not overwriting", self._url(existing.object_key))
                return existing
        if manifests and (manifests[-1].sha256, manifests[-1].size) == (digest, size):
            return manifests[-1]
        return None

    def _transfer(
        self, path: str, key: str, size: int, digest: str, progress: ProgressCallback | None
    ) -> None:
        """Stream ``path`` to ``key`` with boto3's managed transfer."""
        tracker = _Progress(size, progress)
        with _s3_errors(f"upload {path} to {self._url(key)}"):
            extra = {"ContentType": "application/vnd.sqlite3", "Metadata": {"sha256": digest}}
            self._client.upload_file(
                Filename=path,
                Bucket=self.bucket,
                Key=key,
                ExtraArgs=extra,
                Callback=tracker.add,
                Config=self._transfer_config,
            )
        tracker.finish()

    def download(
        self, manifest: Manifest, dest_path: str, *, progress: ProgressCallback | None = None
    ) -> None:
        """Download ``manifest``'s data object to ``dest_path`` and verify it.

        Data is streamed to ``dest_path + ".partial"``, fsynced, checked
        against the manifest's size and sha256 and only then renamed onto
        ``dest_path`` atomically.  On any failure the partial file is removed
        and ``dest_path`` is left untouched; a mismatch raises
        :class:`CorruptSnapshot` naming the object and both digests and sizes.
        """
        partial = dest_path + ".partial"
        url = self._url(manifest.object_key)
        try:
            with _s3_errors(f"download {url}"):
                response = self._client.get_object(Bucket=self.bucket, Key=manifest.object_key)
                with contextlib.closing(response["Body"]) as body:
                    size, digest = _stream_to_file(body, partial, manifest.size, progress)
            if (size, digest) != (manifest.size, manifest.sha256):
                raise CorruptSnapshot(
                    f"snapshot {url} does not match its manifest: expected size {manifest.size} "
                    f"sha256 {manifest.sha256}, got size {size} sha256 {digest}"
                )
            os.replace(partial, dest_path)
        except BaseException:
            _remove_quietly(partial)
            raise
        with contextlib.suppress(OSError):  # best effort: the rename is already done
            fsync_dir(Path(os.path.abspath(dest_path)).parent)

    def apply_retention(self, group: int, keep: int) -> builtins.list[str]:
        """Keep the newest ``keep`` (>= 1) complete snapshots of ``group``; delete older objects.

        Every recognised object whose ``(index, term)`` is below the oldest
        kept snapshot is deleted: older complete snapshots (manifest first,
        then data), orphan data objects, corrupt or dangling manifests.  Newer
        incomplete objects may be uploads in progress and are left alone.  With
        no complete snapshot nothing is deleted.  Returns the deleted keys; a
        partial failure raises :class:`SnapshotStoreError` after deleting what
        it could (re-running is safe).
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        scan = self._scan(group)
        if not scan.manifests:
            return []
        oldest_kept = (scan.manifests[-keep:][0].index, scan.manifests[-keep:][0].term)
        doomed = sorted(key for key, ident in scan.keys.items() if ident < oldest_kept)
        manifests = [k for k in doomed if k.endswith(MANIFEST_SUFFIX)]
        deleted, failed = self._delete_keys(manifests)
        failed_ids = {scan.keys[k] for k in failed}
        data = [k for k in doomed if k.endswith(DATA_SUFFIX) and scan.keys[k] not in failed_ids]
        deleted_data, failed_data = self._delete_keys(data)
        deleted += deleted_data
        if failed or failed_data:
            raise SnapshotStoreError(
                f"retention for group {group}: deleted {len(deleted)} objects, could not delete "
                f"{len(failed) + len(failed_data)} (first: {self._url((failed + failed_data)[0])})"
            )
        return deleted

    def _delete_keys(
        self, keys: builtins.list[str]
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Delete ``keys`` in batches; return ``(deleted, failed)``."""
        deleted: builtins.list[str] = []
        failed: builtins.list[str] = []
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with _s3_errors(f"delete {len(batch)} objects under {self._url(self._cluster_prefix)}"):
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = {e["Key"]: e.get("Message") for e in response.get("Errors", ())}
            for key, message in errors.items():
                log.warning("could not delete %s: %s", self._url(key), message)
            failed += [key for key in batch if key in errors]
            deleted += [key for key in batch if key not in errors]
        return deleted, failed


def _stream_to_file(
    body: Any, path: str, expected_size: int, progress: ProgressCallback | None
) -> tuple[int, str]:
    """Copy a streaming body to ``path`` (fsynced); return ``(size, sha256)`` of the whole body.

    At most ``expected_size + 1`` bytes are written to disk; the rest of an
    oversized body is only hashed so the caller can report its true size and digest.
    """
    tracker = _Progress(expected_size, progress)
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        while chunk := body.read(_IO_CHUNK):
            digest.update(chunk)
            room = expected_size + 1 - size
            if room > 0:
                f.write(chunk[:room])
            size += len(chunk)
            tracker.add(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    if size == expected_size:
        tracker.finish()
    return size, digest.hexdigest()
