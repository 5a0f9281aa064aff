"""InstallSnapshot over HTTP: a leader streams a snapshot file to a lagging follower.

``POST /raft/v1/snapshot`` carries the file as a chunked body and describes it in
headers (group, sender, term, snapshot index/term/membership, size, sha256), with the
cluster secret. The receiver writes it to a temporary file while hashing it, refuses
it if the size or sha256 differ, and only then hands the file to the node, which
adopts it and feeds the corresponding SNAP message to the replica's Raft core. The
whole file is never held in memory on either side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from kvraft.raft.types import ConfState, Message, MsgType, SnapshotMeta
from kvraft.transport.codec import MAX_WIRE_INT
from kvraft.transport.peer import NODE_HEADER, SECRET_HEADER, PeerTransport
from kvraft.transport.tls import url

log = logging.getLogger("kvraft.snapshot")

SNAPSHOT_PATH = "/raft/v1/snapshot"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class IncomingSnapshot:
    group: int
    message: Message
    """The SNAP message (sender, term, meta) to step once the file is adopted."""
    path: Path
    size: int
    sha256: str


OnSnapshot = Callable[[IncomingSnapshot], Awaitable[None]]
SpoolDir = Callable[[int], Path | None]


def _conf_header(conf: ConfState) -> str:
    return json.dumps({"voters": sorted(conf.voters), "learners": sorted(conf.learners)})


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    with open(path, "rb") as f:
        while chunk := await loop.run_in_executor(None, f.read, CHUNK_BYTES):
            yield chunk


async def send_snapshot(transport: PeerTransport, addr: str, group: int, msg: Message,
                        path: Path, size: int, sha256: str, timeout_s: float = 600.0) -> None:
    """Stream ``path`` to the node at ``addr``; raises on any failure."""
    snap = msg.snapshot
    assert snap is not None and transport.session is not None
    headers = {
        SECRET_HEADER: transport.secret, NODE_HEADER: str(transport.node_id),
        "X-Kvraft-Group": str(group), "X-Kvraft-Term": str(msg.term),
        "X-Kvraft-Snapshot-Index": str(snap.index), "X-Kvraft-Snapshot-Term": str(snap.term),
        "X-Kvraft-Snapshot-Conf": _conf_header(snap.conf), "X-Kvraft-Size": str(size),
        "X-Kvraft-Sha256": sha256, "Content-Type": "application/octet-stream",
    }
    async with transport.session.post(
            url(transport.tls, addr, SNAPSHOT_PATH), data=_file_chunks(path), headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)) as r:
        body = await r.text()
        if r.status != 200:
            raise ConnectionError(f"snapshot refused by {addr}: {r.status} {body.strip()}")


def _num(v: object) -> int:
    """A header's (or the conf document's) integer, in the range the wire allows."""
    if isinstance(v, str):
        if not (v.isascii() and v.isdigit()):
            raise ValueError(f"{v[:20]!r} is not a number")
        v = int(v)
    if type(v) is not int or not 0 <= v < MAX_WIRE_INT:
        raise ValueError(f"{v!r} is not a number in [0, 2**62)")
    return v


class SnapshotReceiver:
    def __init__(self, transport: PeerTransport, spool_dir: SpoolDir,
                 on_snapshot: OnSnapshot) -> None:
        self.t = transport
        self.spool_dir = spool_dir
        self.on_snapshot = on_snapshot

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(SNAPSHOT_PATH, self._handle)

    @staticmethod
    def _bad(message: str, status: int = 400) -> web.Response:
        return web.json_response({"error": "bad_request" if status == 400 else "refused",
                                  "message": message}, status=status)

    def _parse(self, request: web.Request, sender: int) -> tuple[int, Message, int, str]:
        h = request.headers
        group = _num(h["X-Kvraft-Group"])
        conf_doc = json.loads(h["X-Kvraft-Snapshot-Conf"])
        conf = ConfState(frozenset(_num(v) for v in conf_doc["voters"]),
                         frozenset(_num(v) for v in conf_doc.get("learners", [])))
        meta = SnapshotMeta(_num(h["X-Kvraft-Snapshot-Index"]),
                            _num(h["X-Kvraft-Snapshot-Term"]), conf)
        msg = Message(MsgType.SNAP, to=self.t.node_id, frm=sender,
                      term=_num(h["X-Kvraft-Term"]), snapshot=meta)
        size, digest = _num(h["X-Kvraft-Size"]), h["X-Kvraft-Sha256"].lower()
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise ValueError("bad sha256")
        return group, msg, size, digest

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sender = self.t.check_sender(request)  # the secret, and with TLS the node's own cert
        try:
            group, msg, size, digest = self._parse(request, sender)
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as e:
            return self._bad(f"malformed snapshot headers: {e}")
        if size > self.t.limits.max_snapshot_bytes:
            return self._bad(f"snapshot of {size} bytes is over max_snapshot_bytes "
                             f"({self.t.limits.max_snapshot_bytes})", 413)
        spool = self.spool_dir(group)
        if spool is None:
            return self._bad(f"no replica of group {group} here", 404)
        spool.mkdir(parents=True, exist_ok=True)
        assert msg.snapshot is not None
        part = spool / f"incoming-{msg.snapshot.index}-{msg.frm}.partial"
        try:
            got_size, got_digest = await self._receive(request, part, size)
            if (got_size, got_digest) != (size, digest):
                return self._bad(f"snapshot {msg.snapshot.index} failed verification: got "
                                 f"{got_size} bytes sha256 {got_digest}, expected {size} bytes "
                                 f"sha256 {digest}", 422)
            await self.on_snapshot(IncomingSnapshot(group, msg, part, size, digest))
        except Exception as e:
            log.warning("snapshot from node %d refused: %s", msg.frm, e)
            return self._bad(str(e), 422)
        finally:
            part.unlink(missing_ok=True)
        return web.json_response({"ok": True})

    @staticmethod
    async def _receive(request: web.Request, part: Path, expect: int) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        h = hashlib.sha256()
        n = 0
        with open(part, "wb") as f:
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                n += len(chunk)
                if n > expect:
                    raise ValueError(f"snapshot larger than announced {expect} bytes")
                h.update(chunk)
                await loop.run_in_executor(None, f.write, chunk)
            await loop.run_in_executor(None, os.fsync, f.fileno())
        return n, h.hexdigest()
