"""Prometheus metrics of a node, served at ``GET /metrics``.

Raft, snapshot, backup and transport figures are read from the node's status when
scraped (no bookkeeping on hot paths); client request counts and latencies are
recorded by the HTTP API as requests complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GROUP_GAUGES = [
    ("term", "term", "Current Raft term."),
    ("commit", "commit_index", "Highest log index known committed."),
    ("applied", "applied_index", "Highest log index applied to state.db."),
    ("last_index", "last_index", "Index of the last log entry."),
    ("snapshot_index", "snapshot_index", "Index the log is compacted to."),
    ("pending_proposals", "pending_proposals", "Writes waiting to commit."),
    ("pending_reads", "pending_reads", "Linearizable reads waiting for ReadIndex."),
]


class NodeCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        yield from self._groups(st.get("groups", {}))
        lag = GaugeMetricFamily("kvraft_loop_lag_max_seconds",
                                "Longest event-loop stall seen since the node started.")
        lag.add_metric([], st.get("loop_lag_max_ms", 0.0) / 1000)
        yield lag
        t = st.get("transport") or {}
        for key, help_text in (("frames_sent", "Peer frames sent."),
                               ("frames_received", "Peer frames received."),
                               ("msgs_dropped", "Raft messages dropped (queue full, peer down)."),
                               ("bad_frames", "Malformed peer frames refused.")):
            c = CounterMetricFamily(f"kvraft_transport_{key}", help_text)
            c.add_metric([], t.get(key, 0))
            yield c
        b = st.get("backup") or {}
        if b.get("enabled"):
            for key, help_text in (("uploads", "Snapshots uploaded to S3."),
                                   ("skipped_unchanged", "Uploads skipped: state unchanged."),
                                   ("failures", "Failed backup attempts.")):
                c = CounterMetricFamily(f"kvraft_backup_{key}", help_text)
                c.add_metric([], b.get(key, 0))
                yield c

    @staticmethod
    def _groups(groups: dict[str, Any]) -> Iterator[Metric]:
        fams = {k: GaugeMetricFamily(f"kvraft_raft_{name}", h, labels=["group"])
                for k, name, h in _GROUP_GAUGES}
        leader = GaugeMetricFamily("kvraft_raft_is_leader", "1 if this replica leads.",
                                   labels=["group"])
        snaps = {k: CounterMetricFamily(f"kvraft_snapshots_{k}", h, labels=["group"])
                 for k, h in (("taken", "Snapshots taken."),
                              ("installed", "Snapshots installed from a leader."),
                              ("sent", "Snapshots streamed to followers."))}
        take = GaugeMetricFamily("kvraft_snapshot_take_seconds_max",
                                 "Longest snapshot so far.", labels=["group"])
        for gid, g in groups.items():
            for k, fam in fams.items():
                fam.add_metric([gid], g.get(k) or 0)
            leader.add_metric([gid], 1 if g.get("role") == "leader" else 0)
            s = g.get("snapshot") or {}
            for k, fam2 in snaps.items():
                fam2.add_metric([gid], s.get(k, 0))
            take.add_metric([gid], s.get("max_take_s", 0.0))
        yield from fams.values()
        yield leader
        yield from snaps.values()
        yield take


class Metrics:
    """The node's registry: request metrics plus the status collector."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(status))
        self.requests = Counter("kvraft_http_requests", "Client API requests.",
                                ["op", "code"], registry=self.registry)
        self.latency = Histogram("kvraft_http_request_seconds", "Client API latency.", ["op"],
                                 registry=self.registry, buckets=(
                                     .0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1,
                                     2.5, 5, 10))

        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(op, status) -> its counter and histogram (``labels()`` costs a lock and
        a validation on every call; there are a few dozen pairs at most)."""

    def observe(self, op: str, code: int, seconds: float) -> None:
        pair = self._children.get((op, code))
        if pair is None:
            pair = self._children[(op, code)] = (self.requests.labels(op, str(code)),
                                                 self.latency.labels(op))
        pair[0].inc()
        pair[1].observe(seconds)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})
