"""Peer transport: Raft messages between nodes over authenticated websockets.

Each node keeps one outbound websocket per peer (over one keep-alive aiohttp session)
and accepts inbound ones at ``/raft/v1/stream``. The upgrade request must carry the
cluster secret (``X-Kvraft-Secret``) and the sender's node id; anything else gets 401.

Sending never blocks the caller: messages go into a bounded per-peer queue drained by
one task per peer, which batches everything queued into one frame per group. When
the queue is full or the peer unreachable, messages are dropped and counted — Raft
tolerates loss, and stale messages are worse than none. A :class:`FaultRules`
object lets tests and the nemesis drop or delay traffic inside the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from kvraft.config import Limits
from kvraft.raft.types import Message
from kvraft.transport import tls as tlsmod
from kvraft.transport.aio import raise_if_cancelled
from kvraft.transport.auth import SECRET_HEADER
from kvraft.transport.codec import WireError, decode_frame, encode_frame

log = logging.getLogger("kvraft.transport")

STREAM_PATH = "/raft/v1/stream"

NODE_HEADER = "X-Kvraft-Node"
ADDR_HEADER = "X-Kvraft-Addr"
"""The sender's own HOST:PORT: a node that joins a group learns how to answer its
leader from the leader's first stream, before any membership entry reaches it."""

Deliver = Callable[[int, list[Message]], None]
Unreachable = Callable[[int], None]


@dataclass(slots=True)
class FaultRules:
    """Faults injected inside the transport (for chaos testing).

    ``blocked_out``/``blocked_in``: peers whose outbound/inbound traffic is dropped.
    ``loss``: probability of dropping each outbound frame; ``delay_ms``: added latency
    (uniform in [0, delay_ms]) for outbound frames.
    """

    blocked_out: set[int] = field(default_factory=set)
    blocked_in: set[int] = field(default_factory=set)
    loss: float = 0.0
    delay_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def clear(self) -> None:
        self.blocked_out.clear()
        self.blocked_in.clear()
        self.loss = 0.0
        self.delay_ms = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"blocked_out": sorted(self.blocked_out), "blocked_in": sorted(self.blocked_in),
                "loss": self.loss, "delay_ms": self.delay_ms}


@dataclass(slots=True)
class TransportStats:
    frames_sent: int = 0
    frames_received: int = 0
    msgs_dropped: int = 0
    bad_frames: int = 0
    connect_failures: int = 0


class _PeerLink:
    def __init__(self, t: PeerTransport, peer: int, addr: str) -> None:
        self.t = t
        self.peer = peer
        self.addr = addr
        self.queue: deque[tuple[int, Message]] = deque()
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False

    def enqueue(self, group: int, msgs: list[Message]) -> None:
        room = self.t.max_queue_msgs - len(self.queue)
        if room < len(msgs):
            self.t.stats.msgs_dropped += len(msgs) - max(room, 0)
            msgs = msgs[:max(room, 0)]
        self.queue.extend((group, m) for m in msgs)
        self.event.set()

    async def run(self) -> None:
        backoff = 0.02
        while True:
            try:
                await self._connected_loop()
                backoff = 0.02
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused, reset, timeouts...
                self.t.stats.connect_failures += 1
                log.debug("link to %s (%s) failed: %s", self.peer, self.addr, e)
            self.connected = False
            self._drop_queue()
            raise_if_cancelled()  # (a cancellation swallowed on the way: stop all the same)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    def _drop_queue(self) -> None:
        if self.queue:
            groups = {g for g, _ in self.queue}
            self.t.stats.msgs_dropped += len(self.queue)
            self.queue.clear()
            for g in groups:
                self.t.unreachable(g, self.peer)

    async def _connected_loop(self) -> None:
        session = self.t.session
        assert session is not None
        headers = {SECRET_HEADER: self.t.secret, NODE_HEADER: str(self.t.node_id)}
        if self.t.listen:
            headers[ADDR_HEADER] = self.t.listen
        async with asyncio.timeout(self.t.connect_timeout_s):
            ws = await session.ws_connect(
                tlsmod.url(self.t.tls, self.addr, STREAM_PATH), headers=headers,
                heartbeat=2.0, max_msg_size=self.t.limits.peer_max_frame_bytes)
        async with ws:
            self.connected = True
            reader = asyncio.get_running_loop().create_task(self._watch_close(ws))
            try:
                while True:
                    if not self.queue:
                        self.event.clear()
                        await self.event.wait()
                    if reader.done():
                        raise ConnectionError("peer closed the stream")
                    await self._flush(ws)
            finally:
                reader.cancel()

    async def _watch_close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Consume control frames until the stream closes, then wake the sender."""
        try:
            async for _ in ws:
                pass
        finally:
            self.event.set()

    async def _flush(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        by_group: dict[int, list[Message]] = {}
        q = self.queue
        while q:
            g, m = q.popleft()
            by_group.setdefault(g, []).append(m)
        faults = self.t.faults
        if self.peer in faults.blocked_out:
            self.t.stats.msgs_dropped += sum(len(v) for v in by_group.values())
            return
        if faults.delay_ms > 0:
            await asyncio.sleep(faults.rng.uniform(0, faults.delay_ms) / 1000)
        budget = self.t.limits.peer_max_frame_bytes // 2  # room for the encoding's overhead
        items = self.t.limits.peer_max_frame_items
        for g, msgs in by_group.items():
            if faults.loss > 0 and faults.rng.random() < faults.loss:
                self.t.stats.msgs_dropped += len(msgs)
                continue
            for part in _frames(msgs, budget, items):
                await ws.send_bytes(encode_frame(g, part))
                self.t.stats.frames_sent += 1


class PeerTransport:
    def __init__(self, *, node_id: int, secret: str, deliver: Deliver,
                 unreachable: Callable[[int, int], None] | None = None,
                 max_queue_msgs: int = 10_000, connect_timeout_s: float = 2.0,
                 listen: str = "", learn: Callable[[int, str], None] | None = None,
                 tls: tlsmod.TLS | None = None, limits: Limits | None = None) -> None:
        self.listen = listen
        self.tls = tls
        self.limits = limits or Limits()
        """With TLS, peers connect with their node certificates (mutual TLS)."""
        self.learn = learn
        """Called with (peer, address) when a peer this node has no link to connects."""
        if not secret:
            raise ValueError("a cluster secret is required")
        self.node_id = node_id
        self.secret = secret
        self.deliver = deliver
        self.unreachable = unreachable or (lambda group, peer: None)
        self.max_queue_msgs = max_queue_msgs
        self.connect_timeout_s = connect_timeout_s
        self.links: dict[int, _PeerLink] = {}
        self.session: aiohttp.ClientSession | None = None
        self.faults = FaultRules()
        self.stats = TransportStats()
        self._inbound: set[web.WebSocketResponse] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(STREAM_PATH, self._handle_stream)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, force_close=False, ssl=tlsmod.client_ssl(self.tls)))

    def set_peer(self, peer: int, addr: str) -> None:
        link = self.links.get(peer)
        if link is not None and link.addr == addr:
            return
        if link is not None and link.task is not None:
            link.task.cancel()
        link = self.links[peer] = _PeerLink(self, peer, addr)
        link.task = asyncio.get_running_loop().create_task(link.run())

    def send(self, group: int, msgs: list[Message]) -> None:
        """Queue messages for delivery (best effort, never blocks)."""
        by_peer: dict[int, list[Message]] = {}
        for m in msgs:
            by_peer.setdefault(m.to, []).append(m)
        for peer, ms in by_peer.items():
            link = self.links.get(peer)
            if link is None:
                self.stats.msgs_dropped += len(ms)
                continue
            link.enqueue(group, ms)

    def has_secret(self, request: web.Request) -> bool:
        """The request carries the cluster secret (an operator's or a node's call)."""
        got = request.headers.get(SECRET_HEADER, "")
        return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), self.secret.encode())

    def authorized(self, request: web.Request) -> bool:
        """A call from a node of the cluster: the cluster secret and, with TLS, a node
        certificate signed by the cluster CA."""
        return self.has_secret(request) and (
            self.tls is None or tlsmod.peer_node_id(request) is not None)

    def check_sender(self, request: web.Request) -> int:
        """The id of the node sending ``request`` (``X-Kvraft-Node``), which must be a
        node of the cluster and, with TLS, the node its certificate names."""
        if not self.authorized(request):
            raise _refused(web.HTTPUnauthorized, "peer request without a valid cluster secret"
                           + ("" if self.tls is None else " and node certificate"))
        raw = request.headers.get(NODE_HEADER, "")
        if not (raw.isascii() and raw.isdigit()):
            raise _refused(web.HTTPBadRequest, f"missing or invalid {NODE_HEADER}")
        sender = int(raw)
        if sender == self.node_id:
            raise _refused(web.HTTPForbidden, f"node {sender} is this node")
        if self.tls is not None and tlsmod.peer_node_id(request) != sender:
            raise _refused(web.HTTPForbidden, f"the certificate does not name node {sender}")
        return sender

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        sender = self.check_sender(request)
        addr = request.headers.get(ADDR_HEADER, "")
        if sender not in self.links and addr and self.learn is not None and sender != self.node_id:
            self.learn(sender, addr)
        ws = web.WebSocketResponse(heartbeat=2.0, max_msg_size=self.limits.peer_max_frame_bytes)
        await ws.prepare(request)
        self._inbound.add(ws)
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:  # too large: aiohttp closed it (1009)
                    self.stats.bad_frames += 1
                    log.warning("closing the stream from node %s: %s", sender, ws.exception())
                    break
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                if sender in self.faults.blocked_in:
                    continue
                self.stats.frames_received += 1
                try:
                    group, msgs = decode_frame(msg.data, self.limits.peer_max_frame_items)
                except WireError as e:
                    self.stats.bad_frames += 1
                    log.warning("dropping bad frame from node %s: %s", sender, e)
                    continue
                if any(m.frm != sender or m.to != self.node_id for m in msgs):
                    self.stats.bad_frames += 1
                    continue
                self.deliver(group, msgs)
        finally:
            self._inbound.discard(ws)
        return ws

    async def close(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
        for link in self.links.values():
            if link.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
        for ws in list(self._inbound):
            await ws.close()
        if self.session is not None:
            await self.session.close()


def _frames(msgs: list[Message], budget: int, items: int) -> list[list[Message]]:
    """``msgs`` in runs of at most ``items`` messages and about ``budget`` bytes of
    entries each (a single larger message goes alone)."""
    out: list[list[Message]] = []
    cur: list[Message] = []
    size = 0
    for m in msgs:
        n = sum(len(e.data) + 32 for e in m.entries)
        if cur and (size + n > budget or len(cur) >= items):
            out.append(cur)
            cur, size = [], 0
        cur.append(m)
        size += n
    if cur:
        out.append(cur)
    return out


def _refused(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    code = {401: "unauthorized", 403: "forbidden"}.get(cls.status_code, "bad_request")
    return cls(text=json.dumps({"error": code, "message": message}),
               content_type="application/json")
