"""S3 backups: the leader of each group uploads its latest snapshot.

Uploads happen every ``interval_s`` and on demand (``kvraft backup``). The leader first
takes a fresh snapshot if its state moved past the newest local one, then uploads it
through :class:`~kvraft.storage.s3.S3SnapshotStore` (which skips unchanged state and
uses multipart for large files) and applies the retention setting. Failures — S3
unreachable, throttled, refusing — are logged and counted, never fatal: the cluster
keeps serving and the next attempt comes after ``retry_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvraft.config import BackupSettings
from kvraft.raft import Role
from kvraft.storage.s3 import Manifest, S3SnapshotStore

if TYPE_CHECKING:
    from kvraft.runtime.replica import Replica

log = logging.getLogger("kvraft.backup")


@dataclass(slots=True)
class BackupStats:
    uploads: int = 0
    skipped_unchanged: int = 0
    failures: int = 0
    last_error: str = ""
    last_manifest: dict[str, Any] | None = None
    last_success_unix: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class NotLeaderForBackup(Exception):
    """Backups are taken by the group's leader; this node does not lead."""


class BackupManager:
    def __init__(self, settings: BackupSettings, node_id: int) -> None:
        self.settings = settings
        self.node_id = node_id
        self.stats = BackupStats()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="s3-backup")
        self._lock = asyncio.Lock()
        self._store: S3SnapshotStore | None = None

    def store(self) -> S3SnapshotStore:
        if self._store is None:
            s = self.settings
            self._store = S3SnapshotStore(
                bucket=s.bucket, prefix=s.prefix, cluster=s.cluster, endpoint_url=s.endpoint_url,
                region=s.region, multipart_threshold_bytes=s.multipart_threshold_bytes,
                connect_timeout_s=3, read_timeout_s=30, max_attempts=2)
        return self._store

    async def backup(self, replica: Replica) -> tuple[Manifest, bool]:
        """Snapshot (if needed) and upload; raises NotLeaderForBackup or SnapshotStoreError."""
        if replica.soft.role != Role.LEADER:
            raise NotLeaderForBackup(f"node {self.node_id} does not lead group "
                                     f"{replica.group_id}")
        async with self._lock:
            snap = await replica.snapshot_for_backup()
            loop = asyncio.get_running_loop()
            try:
                manifest, uploaded = await loop.run_in_executor(
                    self._io, self._upload_sync, replica.group_id, snap)
            except Exception as e:  # S3 trouble of any kind is counted, never fatal
                self.stats.failures += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                raise
            if uploaded:
                self.stats.uploads += 1
            else:
                self.stats.skipped_unchanged += 1
            self.stats.last_manifest = manifest.to_dict()
            self.stats.last_success_unix = time.time()
            return manifest, uploaded

    def _upload_sync(self, group: int, snap: Any) -> tuple[Manifest, bool]:
        store = self.store()
        store.ensure_bucket()
        membership = {"voters": sorted(snap.conf.voters), "learners": sorted(snap.conf.learners),
                      "addresses": {str(k): a for k, a in snap.conf.addresses}}
        manifest, uploaded = store.upload(group, str(snap.path), index=snap.index, term=snap.term,
                                          membership=membership, node=str(self.node_id))
        if uploaded:
            store.apply_retention(group, self.settings.keep)
        return manifest, uploaded

    async def run(self, replicas: dict[int, Replica]) -> None:
        """Periodic uploads by whichever groups this node leads."""
        s = self.settings
        delay = min(s.interval_s, s.retry_s)
        while True:
            await asyncio.sleep(delay)
            delay = s.interval_s
            for r in list(replicas.values()):
                if r.soft.role != Role.LEADER:
                    continue
                try:
                    m, up = await self.backup(r)
                    log.info("group %d backup %s at index %d", r.group_id,
                             "uploaded" if up else "unchanged", m.index)
                except Exception as e:
                    log.warning("group %d backup failed (will retry in %.0fs): %s",
                                r.group_id, s.retry_s, e)
                    delay = min(s.retry_s, s.interval_s)

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        st = self.stats
        return {"enabled": True, "bucket": self.settings.bucket, "prefix": self.settings.prefix,
                "cluster": self.settings.cluster, "uploads": st.uploads,
                "skipped_unchanged": st.skipped_unchanged, "failures": st.failures,
                "last_error": st.last_error, "last_manifest": st.last_manifest,
                "last_success_unix": st.last_success_unix}
