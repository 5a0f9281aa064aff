"""Every setting of a node, defined once: its name, unit, default and meaning.

The settings are frozen dataclasses, one per component, nested in :class:`NodeSettings`:
:class:`ReplicaSettings` (Raft timing, with :class:`SnapshotSettings`), :class:`Limits`
(the client API), :class:`BackupSettings` (S3) and :class:`ShardSettings` (moving
ranges between groups). Each field is declared with :func:`setting`: its default, a
one-line description and the range of values it accepts. The unit is in the name
(``_ms``, ``_s``, ``_bytes``, ``_ticks``, ``_entries``, ``_keys``). Code that needs a
default reads it from here (``NodeSettings().max_sessions``); nothing restates one.

:data:`SERVE_SETTINGS` maps each tunable that ``kvraft serve`` accepts, as a TOML key of
its ``--config`` file and as ``--the-key-with-dashes``, to where it lives in
:class:`NodeSettings`. :data:`MEMBERSHIP` lists the keys that say who a node is (they
have no defaults). :func:`settings_from` builds a validated :class:`NodeSettings` from
such values. :class:`LocalClusterSettings` holds the defaults of ``kvraft up``.

This module is a leaf: it imports nothing from kvraft, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: T, doc: str, *, minimum: float | None = None,
            maximum: float | None = None, min_open: bool = False) -> T:
    """A settings field: its ``default``, a one-line ``doc`` and the values it accepts.

    ``minimum``/``maximum`` bound a number (inclusive; ``min_open``: the minimum is
    excluded).
    """
    return field(default=default, metadata={"doc": doc, "minimum": minimum,
                                            "maximum": maximum, "min_open": min_open})


# --- the settings --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    entries: int = setting(10_000, "Snapshot after this many applied entries; 0 disables.",
                           minimum=0)
    catchup_entries: int = setting(
        1_000, "Log entries kept below a snapshot for lagging followers.", minimum=0)
    log_bytes: int = setting(
        32 << 20, "Also snapshot once this many bytes of entries were applied since the "
        "last one (bounds the log held in memory); 0 disables.", minimum=0)
    catchup_bytes: int = setting(
        4 << 20, "At most this many bytes of log kept below a snapshot.", minimum=0)
    keep: int = setting(2, "Local snapshot files kept per group.", minimum=1)


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    tick_ms: int = setting(50, "Raft tick interval in milliseconds.", minimum=1)
    election_ticks: int = setting(
        10, "Election timeout in ticks (randomized up to twice as long).", minimum=2)
    heartbeat_ticks: int = setting(
        2, "Heartbeat interval in ticks (less than the election timeout).", minimum=1)
    max_msg_bytes: int = setting(1 << 20, "Largest batch of entries in one append.",
                                 minimum=1)
    max_inflight_msgs: int = setting(256, "Appends in flight per follower.", minimum=1)
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    inline_apply_max_entries: int = setting(
        8, "Committed entries applied inline (more go to the apply thread).", minimum=0)
    inline_apply_max_bytes: int = setting(
        64 << 10, "Largest batch (bytes of entry data) applied inline on the event loop.",
        minimum=0)
    inline_log_max_entries: int = setting(
        8, "A follower writes a batch of at most this many entries to raft.db on the event "
        "loop itself when the log thread is idle (no thread hop on the write path); 0: never.",
        minimum=0)
    lease_reads: int = setting(
        0, "1: a leader serves linearizable reads under a lease renewed by quorum rounds, "
        "with no round of its own (needs clocks that tick at nearly the same rate and "
        "equal tick_ms and election_ticks on every node; see kvraft.runtime.lease); "
        "0: every read confirms leadership with a quorum (ReadIndex).",
        minimum=0, maximum=1)
    checkpoint_entries: int = setting(
        500, "Run WAL checkpoints of raft.db and state.db (off the hot path) this often.",
        minimum=1)


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_bytes: int = setting(4096, "Largest key accepted, in bytes.", minimum=1)
    max_value_bytes: int = setting(1 << 20, "Largest value accepted, in bytes.", minimum=1)
    request_timeout_s: float = setting(5.0, "Default deadline of a client request.",
                                       minimum=0, min_open=True)
    max_client_id_chars: int = setting(128, "Longest client session id.", minimum=1)
    stream_max_message_bytes: int = setting(
        4 << 20, "Largest message on a client stream (/v1/stream), in bytes; keep it "
        "above max_value_bytes plus max_key_bytes.", minimum=1024)
    stream_max_batch: int = setting(1024, "Most requests in one client stream message.",
                                    minimum=1)
    stream_max_inflight: int = setting(
        1024, "Most requests of one client stream served at once.", minimum=1)
    max_scan_limit: int = setting(10_000, "Most keys one scan returns.", minimum=1)
    max_json_bytes: int = setting(1 << 20, "Largest JSON body of an admin or controller "
                                  "call, in bytes.", minimum=1024)
    max_header_bytes: int = setting(8190, "Longest request line or header field, in bytes.",
                                    minimum=256)
    max_headers: int = setting(128, "Most header fields in one request.", minimum=8)
    max_connections: int = setting(2048, "Most connections open at once (clients and peers); "
                                   "more are closed at once.", minimum=4)
    header_timeout_s: float = setting(
        10.0, "Seconds a new connection has to finish TLS and send its first request's "
        "headers (slow clients are dropped).", minimum=0, min_open=True)
    idle_timeout_s: float = setting(60.0, "Seconds a kept-alive connection may stay idle.",
                                    minimum=0, min_open=True)
    peer_max_frame_bytes: int = setting(
        64 << 20, "Largest frame on the peer stream, in bytes (senders split larger "
        "batches); keep it well above max_msg_bytes.", minimum=1 << 16)
    peer_max_frame_items: int = setting(
        200_000, "Most messages in a peer frame, and entries in a message.", minimum=64)
    max_snapshot_bytes: int = setting(
        1 << 40, "Largest snapshot a node accepts from a peer, in bytes.", minimum=1 << 20)


@dataclass(frozen=True, slots=True)
class BackupSettings:
    bucket: str = setting("", "Enable S3 backups to this bucket (empty: no backups).")
    prefix: str = setting("kvraft", "Key prefix in the bucket.")
    cluster: str = setting("default", "Cluster name in S3 (part of every object key).")
    endpoint_url: str | None = setting(None, "S3 endpoint (MinIO, moto); unset: AWS.")
    region: str | None = setting(None, "S3 region; unset: boto3's default.")
    interval_s: float = setting(300.0, "Seconds between uploads.", minimum=0, min_open=True)
    retry_s: float = setting(10.0, "Seconds before retrying a failed upload.",
                             minimum=0, min_open=True)
    keep: int = setting(5, "Snapshots kept in S3 per group.", minimum=1)
    multipart_threshold_bytes: int = setting(64 << 20, "Upload files this large in parts.",
                                             minimum=1)

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)


@dataclass(frozen=True, slots=True)
class ShardSettings:
    poll_interval_s: float = setting(
        0.1, "How often a group's leader looks for a newer configuration and for work.",
        minimum=0, min_open=True)
    chunk_bytes: int = setting(
        256 << 10, "Largest chunk of keys (bytes of keys and values) moved in one log entry.",
        minimum=1)
    session_chunk: int = setting(500, "Client sessions per SESSIONS entry.", minimum=1)
    gc_batch_keys: int = setting(2000, "Keys deleted per GC entry.", minimum=1)
    max_concurrent_pulls: int = setting(2, "Ranges pulled at once per group.", minimum=1)
    step_timeout_s: float = setting(10.0, "Deadline of one migration step (a pull, a check).",
                                    minimum=0, min_open=True)
    max_copy_bytes_per_s: int = setting(
        8 << 20, "Bandwidth of range copies into one group (bytes of keys and values per "
        "second, all its pulls together); 0: unlimited.", minimum=0)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything about a node that has a default (who it is lives in ``NodeConfig``)."""

    replica: ReplicaSettings = field(default_factory=ReplicaSettings)
    limits: Limits = field(default_factory=Limits)
    backup: BackupSettings = field(default_factory=BackupSettings)
    shard: ShardSettings = field(default_factory=ShardSettings)
    max_sessions: int = setting(
        100_000, "Client sessions remembered per data group (least recently used evicted).",
        minimum=1)
    history_keep: int = setting(
        1000, "Configurations the controller keeps (query(n) answers for these).", minimum=1)


@dataclass(frozen=True, slots=True)
class LocalClusterSettings:
    """``kvraft up``: a local cluster on one host."""

    nodes: int = setting(3, "Nodes (one process each).", minimum=1, maximum=9)
    groups: int = setting(2, "Data groups (each on every node) on first start.",
                          minimum=1, maximum=16)
    base_port: int = setting(7001, "Port of node 1 (node N listens on base_port + N - 1).",
                             minimum=1024, maximum=65000)
    host: str = setting("127.0.0.1", "Address the nodes listen on.")
    data_dir: str = setting("./kvraft-data", "Where the cluster's layout, data and logs live.")

    def addrs(self) -> list[str]:
        return [f"{self.host}:{self.base_port + i}" for i in range(self.nodes)]


# --- the registry of kvraft serve's keys -----------------------------------------------


class SettingError(ValueError):
    """A value that a setting does not accept (the message names the setting)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key} {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Setting:
    """One tunable of ``kvraft serve``: TOML key ``key``, option ``--key-with-dashes``."""

    key: str
    path: tuple[str, ...]
    """Where it lives: attribute names from the settings class it was described from."""
    kind: type
    """``int``, ``float`` or ``str``."""
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    optional: bool = False
    """``None`` is a valid value (and the default means "unset")."""
    envvar: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def where(self) -> str:
        return ".".join(self.path)

    def shown_default(self) -> str | None:
        """The default as --help shows it (None: nothing worth showing)."""
        if self.default is None or self.default == "":
            return None
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    def bounds(self) -> str:
        """The accepted range in words ("", ">= 1", "> 0", "from 1 to 9")."""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"from {_num(lo)} to {_num(hi)}"
        if lo is not None:
            return f"{'>' if self.min_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"<= {_num(hi)}"
        return ""

    def accepted(self) -> str:
        """What the setting accepts, in words: "an integer >= 1"."""
        noun = {int: "an integer", float: "a number", str: "a string"}[self.kind]
        return f"{noun} {self.bounds()}".rstrip()

    def parse(self, value: object) -> Any:
        """``value`` (from TOML or code) as this setting's type, or a SettingError."""
        if value is None and self.optional:
            return None
        ok: bool
        if self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value))
            value = float(value) if ok else value  # type: ignore[arg-type]
        else:
            ok = isinstance(value, str)
        if ok and isinstance(value, int | float):
            lo, hi = self.minimum, self.maximum
            ok = ((lo is None or value > lo or (value == lo and not self.min_open))
                  and (hi is None or value <= hi))
        if not ok:
            raise SettingError(self.key, f"must be {self.accepted()}, got {value!r}")
        return value


def _num(x: float) -> str:
    return f"{x:g}"


def describe(cls: type, dotted: str, *, key: str | None = None,
             envvar: str | None = None) -> Setting:
    """The :class:`Setting` for field ``dotted`` ("replica.tick_ms") of settings ``cls``.

    Its type, default, description and range are the field's: read, not restated.
    """
    path = tuple(dotted.split("."))
    owner = cls
    for name in path[:-1]:
        owner = typing.get_type_hints(owner)[name]
    f = {f.name: f for f in dataclasses.fields(owner)}[path[-1]]
    hint = typing.get_type_hints(owner)[path[-1]]
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if kind not in (int, float, str):
        raise TypeError(f"{owner.__name__}.{f.name}: {hint} is not a setting type")
    if "doc" not in f.metadata:
        raise TypeError(f"{owner.__name__}.{f.name} is not declared with setting()")
    return Setting(key=key or path[-1], path=path, kind=kind, default=f.default,
                   doc=f.metadata["doc"], minimum=f.metadata["minimum"],
                   maximum=f.metadata["maximum"], min_open=f.metadata["min_open"],
                   optional=optional, envvar=envvar)


def _node(key: str, dotted: str, envvar: str | None = None) -> Setting:
    return describe(NodeSettings, dotted, key=key, envvar=envvar)


SERVE_SETTINGS: tuple[Setting, ...] = (
    _node("tick_ms", "replica.tick_ms"),
    _node("election_ticks", "replica.election_ticks"),
    _node("heartbeat_ticks", "replica.heartbeat_ticks"),
    _node("lease_reads", "replica.lease_reads"),
    _node("max_key_bytes", "limits.max_key_bytes"),
    _node("max_value_bytes", "limits.max_value_bytes"),
    _node("stream_max_message_bytes", "limits.stream_max_message_bytes"),
    _node("stream_max_batch", "limits.stream_max_batch"),
    _node("stream_max_inflight", "limits.stream_max_inflight"),
    _node("max_scan_limit", "limits.max_scan_limit"),
    _node("max_json_bytes", "limits.max_json_bytes"),
    _node("max_header_bytes", "limits.max_header_bytes"),
    _node("max_headers", "limits.max_headers"),
    _node("max_connections", "limits.max_connections"),
    _node("header_timeout_s", "limits.header_timeout_s"),
    _node("idle_timeout_s", "limits.idle_timeout_s"),
    _node("peer_max_frame_bytes", "limits.peer_max_frame_bytes"),
    _node("peer_max_frame_items", "limits.peer_max_frame_items"),
    _node("max_snapshot_bytes", "limits.max_snapshot_bytes"),
    _node("snapshot_entries", "replica.snapshot.entries"),
    _node("snapshot_catchup_entries", "replica.snapshot.catchup_entries"),
    _node("s3_bucket", "backup.bucket", "KVRAFT_S3_BUCKET"),
    _node("s3_prefix", "backup.prefix", "KVRAFT_S3_PREFIX"),
    _node("s3_endpoint_url", "backup.endpoint_url", "KVRAFT_S3_ENDPOINT_URL"),
    _node("s3_region", "backup.region", "AWS_REGION"),
    _node("cluster_name", "backup.cluster", "KVRAFT_CLUSTER"),
    _node("backup_interval_s", "backup.interval_s"),
    _node("backup_retry_s", "backup.retry_s"),
    _node("backup_keep", "backup.keep"),
    _node("shard_poll_interval_s", "shard.poll_interval_s"),
    _node("shard_chunk_bytes", "shard.chunk_bytes"),
    _node("shard_gc_batch_keys", "shard.gc_batch_keys"),
    _node("shard_max_concurrent_pulls", "shard.max_concurrent_pulls"),
    _node("shard_max_copy_bytes_per_s", "shard.max_copy_bytes_per_s"),
    _node("snapshot_log_bytes", "replica.snapshot.log_bytes"),
    _node("snapshot_catchup_bytes", "replica.snapshot.catchup_bytes"),
    _node("max_sessions", "max_sessions"),
    _node("history_keep", "history_keep"),
)
"""The tunables of ``kvraft serve``, in --help order."""

SERVE_SETTING = {s.key: s for s in SERVE_SETTINGS}


@dataclass(frozen=True, slots=True)
class MemberKey:
    """A key that says who a node is: no default (``NodeConfig`` field ``field``)."""

    key: str
    option: str
    field: str
    doc: str
    envvar: str | None = None


MEMBERSHIP: tuple[MemberKey, ...] = (
    MemberKey("id", "--id", "node_id", "This node's id (a positive integer)."),
    MemberKey("listen", "--listen", "listen", "HOST:PORT to serve clients and peers on."),
    MemberKey("peers", "--peer", "peers", "ID=HOST:PORT of a group member (repeat; in TOML "
              "a [peers] table)."),
    MemberKey("groups", "--group", "groups", "A group this node is a bootstrap member of, "
              "with its peers (repeat); 0 is the shard controller."),
    MemberKey("controller", "--controller", "controller", "HOST:PORT,... of the "
              "controller's members (needed when this node does not host group 0)."),
    MemberKey("join", "--join", "join", "HOST:PORT of a cluster member: start this node's "
              "groups with no members and wait to be added (kvraft member add). Ignored "
              "once the node holds state."),
    MemberKey("data_dir", "--data-dir", "data_dir", "Where raft.db/state.db live."),
    MemberKey("secret_file", "--secret-file", "secret", "File holding the cluster secret "
              "(else KVRAFT_SECRET, else `secret` in the TOML file; never on the command "
              "line, where ps shows it)."),
    MemberKey("tls_ca", "--tls-ca", "tls", "The cluster CA's certificate (kvraft certs init)."),
    MemberKey("tls_cert", "--tls-cert", "tls", "This node's certificate (kvraft certs issue "
              "node)."),
    MemberKey("tls_key", "--tls-key", "tls", "This node's private key."),
)
MEMBER = {m.key: m for m in MEMBERSHIP}

FLAGS: dict[str, str] = {
    "insecure": "Serve and call plain HTTP with no TLS, and require no token unless --auth "
                "(local experiments only: a warning is logged).",
    "auth": "Require a client token on every call (default: on, off with --insecure).",
    "enable_fault_injection": "Serve /v1/admin/faults, the chaos nemesis's hook (default: "
                              "off, a 404).",
}
"""The boolean keys of ``kvraft serve`` (``--flag``; ``auth`` also ``--no-auth``)."""

SERVE_KEYS = frozenset(MEMBER) | frozenset(SERVE_SETTING) | frozenset(FLAGS) | {"secret"}
"""Every key of ``kvraft serve``'s TOML file."""


def unknown_keys(values: Iterable[str]) -> list[str]:
    return sorted(k for k in values if k not in SERVE_KEYS)


def settings_from(*layers: Mapping[str, Any], base: NodeSettings | None = None
                  ) -> NodeSettings:
    """A :class:`NodeSettings` from layers of ``{key: value}`` (keys of SERVE_SETTINGS).

    For each setting the first layer that gives a value other than ``None`` wins (pass
    the command line before the file); the rest keep ``base``'s values (the defaults).
    Keys that are not settings are ignored. Raises :class:`SettingError`.
    """
    out = base if base is not None else NodeSettings()
    for s in SERVE_SETTINGS:
        value = next((layer[s.key] for layer in layers if layer.get(s.key) is not None), None)
        if value is not None:
            out = _replace_at(out, s.path, s.parse(value))
    r = out.replica
    if r.heartbeat_ticks >= r.election_ticks:
        raise SettingError("heartbeat_ticks", f"({r.heartbeat_ticks}) must be less than "
                           f"election_ticks ({r.election_ticks})")
    if r.lease_reads and r.election_ticks < 3:
        raise SettingError("lease_reads", f"needs election_ticks >= 3 (it is "
                           f"{r.election_ticks}): the lease is election_ticks - 2 ticks long")
    return out


def _replace_at(obj: T, path: tuple[str, ...], value: Any) -> T:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})  # type: ignore[type-var]
    inner = _replace_at(getattr(obj, path[0]), path[1:], value)
    return dataclasses.replace(obj, **{path[0]: inner})  # type: ignore[type-var]
