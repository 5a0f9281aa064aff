"""Snapshot manifests, errors and object-key layout of kvraft's S3 snapshot store.

The store itself is :class:`kvraft.storage.s3.S3SnapshotStore`;
:mod:`kvraft.storage.s3` re-exports :class:`Manifest`, :data:`FORMAT_VERSION`
and the errors, whose base :class:`SnapshotStoreError` is a
:class:`kvraft.errors.KvraftError`.  Object layout, under the store's bucket
and optional prefix::

    <prefix>/<cluster>/group-<gid>/snapshots/<index:020d>-<term:020d>.sqlite
    <prefix>/<cluster>/group-<gid>/snapshots/<index:020d>-<term:020d>.manifest.json

Zero-padding makes lexical key order equal to (index, term) order.  This
module does no I/O and does not depend on boto3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from kvraft.errors import KvraftError

__all__ = [
    "DATA_SUFFIX",
    "FORMAT_VERSION",
    "GROUP_RE",
    "MANIFEST_SUFFIX",
    "NAME_RE",
    "CorruptSnapshot",
    "Manifest",
    "SnapshotNotFound",
    "SnapshotStoreError",
    "StoreUnavailable",
    "check_non_negative",
    "cluster_key_prefix",
    "group_key_prefix",
    "snapshot_key",
]

FORMAT_VERSION = 1
"""Manifest format understood by this module."""

DATA_SUFFIX = ".sqlite"
"""Suffix of a snapshot's data object key."""

MANIFEST_SUFFIX = ".manifest.json"
"""Suffix of a snapshot's manifest object key."""

NAME_RE = re.compile(r"^(\d{20})-(\d{20})(\.sqlite|\.manifest\.json)$")
"""Matches a key relative to its group prefix: groups index, term and suffix."""

GROUP_RE = re.compile(r"^group-(\d+)/$")
"""Matches a group's common prefix relative to the cluster prefix: groups the group id."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class SnapshotStoreError(KvraftError):
    """Base class of every error the snapshot store raises about S3 or snapshot content."""


class SnapshotNotFound(SnapshotStoreError):
    """No complete snapshot matches the request (or its object vanished)."""


class CorruptSnapshot(SnapshotStoreError):
    """A manifest or data object is malformed or does not match its manifest."""


class StoreUnavailable(SnapshotStoreError):
    """S3 is unreachable, timing out, throttling or failing (5xx); retry later."""


def check_non_negative(**values: int) -> None:
    """Raise :class:`ValueError` unless every value is a non-negative int (not a bool)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def cluster_key_prefix(prefix: str, cluster: str) -> str:
    """Key prefix (ending in ``/``) of ``cluster`` under ``prefix`` (no outer ``/``, may be "")."""
    return "/".join(p for p in (prefix, cluster) if p) + "/"


def group_key_prefix(cluster_prefix: str, group: int) -> str:
    """Key prefix (ending in ``/``) under which ``group``'s snapshots live."""
    check_non_negative(group=group)
    return f"{cluster_prefix}group-{group}/snapshots/"


def snapshot_key(
    cluster_prefix: str, group: int, index: int, term: int, suffix: str = DATA_SUFFIX
) -> str:
    """Key of the data object of the snapshot at ``(index, term)`` (with
    ``suffix=MANIFEST_SUFFIX``, of its manifest)."""
    check_non_negative(index=index, term=term)
    return f"{group_key_prefix(cluster_prefix, group)}{index:020d}-{term:020d}{suffix}"


_STR_FIELDS = ("cluster", "sha256", "created", "object_key", "node")
_INT_FIELDS = ("group", "index", "term", "size")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Description of one complete snapshot, stored next to its data object.

    ``membership`` is an arbitrary JSON value supplied by the uploader (for
    example ``{"voters": [1, 2, 3]}``); ``node`` identifies the uploader.
    """

    cluster: str
    group: int
    index: int
    term: int
    membership: Any
    size: int
    sha256: str
    created_unix: float
    created: str
    object_key: str
    node: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def manifest_key(self) -> str:
        """Key of the manifest object belonging to ``object_key``."""
        return self.object_key.removesuffix(DATA_SUFFIX) + MANIFEST_SUFFIX

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as a plain JSON-compatible dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Serialise to the on-S3 JSON form (stable key order)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "manifest") -> Manifest:
        """Validate and build a manifest; raises :class:`CorruptSnapshot` naming ``source``."""
        if not isinstance(data, dict):
            raise CorruptSnapshot(
                f"{source}: manifest must be a JSON object, got {type(data).__name__}"
            )
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise CorruptSnapshot(
                f"{source}: unsupported manifest format_version {version!r} (expected {FORMAT_VERSION})"
            )
        checks = [(name, str) for name in _STR_FIELDS] + [(name, int) for name in _INT_FIELDS]
        for name, kind in [*checks, ("created_unix", (int, float))]:
            value = data.get(name)
            bad_int = kind is int and isinstance(value, int) and value < 0
            if isinstance(value, bool) or not isinstance(value, kind) or bad_int:
                raise CorruptSnapshot(f"{source}: manifest field {name!r} is invalid: {value!r}")
        if "membership" not in data:
            raise CorruptSnapshot(f"{source}: manifest field 'membership' is missing")
        if not math.isfinite(data["created_unix"]):
            raise CorruptSnapshot(f"{source}: manifest field 'created_unix' is not finite")
        if not _SHA256_RE.match(data["sha256"]):
            raise CorruptSnapshot(f"{source}: manifest sha256 is not a hex digest")
        fields = {name: data[name] for name, _kind in checks}
        return cls(
            **fields,
            created_unix=float(data["created_unix"]),
            membership=data["membership"],
            format_version=version,
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "manifest") -> Manifest:
        """Parse manifest JSON; malformed JSON or a wrong format raises :class:`CorruptSnapshot`."""
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptSnapshot(f"{source}: manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=source)
