"""Limits on what a client or a peer controls, each against a real node in-process (an
aiohttp server on 127.0.0.1, real SQLite): each limit refuses what is over it with a 4xx
or a close, is counted, and leaves the node serving everyone else."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import msgpack

from kvraft import AsyncClient
from kvraft.config import Limits, NodeSettings
from kvraft.raft.types import Entry, Message, MsgType
from kvraft.runtime.node import Node
from kvraft.testing.inprocess import single_node
from kvraft.transport.codec import encode_frame

PEER = {"X-Kvraft-Secret": "s", "X-Kvraft-Node": "2"}


async def _node(tmp_path: Path, **limits: object) -> Node:
    return await single_node(tmp_path / "n1", NodeSettings(limits=Limits(**limits)))  # type: ignore[arg-type]


async def _still_serves(addr: str, key: str = "after") -> None:
    async with AsyncClient([addr], timeout_s=30) as c:
        await c.put(key, "ok")
        assert await c.get(key) == "ok"


def _raw(addr: str, data: bytes, timeout_s: float = 30.0) -> bytes:
    """Send ``data`` on a new connection; everything the node answers until it closes."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and b"Connection: close" not in out and \
                    b"connection: close" not in out.lower():
                break
        return out


async def test_header_sizes_and_counts(tmp_path: Path) -> None:
    node = await _node(tmp_path, max_header_bytes=1024, max_headers=16)
    addr = node.cfg.listen
    try:
        loop = asyncio.get_running_loop()
        long_field = (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000
                      + b"\r\n\r\n")
        many = (b"GET /health HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"\r\n")
        long_line = b"GET /v1/kv/" + b"k" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        for req in (long_field, many, long_line):
            answer = await loop.run_in_executor(None, _raw, addr, req)
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, answer[:200]
        ok = await loop.run_in_executor(None, _raw, addr,
                                        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok
        await _still_serves(addr)
    finally:
        await node.stop()


async def test_a_slowloris_connection_is_dropped_and_others_are_served(tmp_path: Path) -> None:
    node = await _node(tmp_path, header_timeout_s=0.5)
    addr = node.cfg.listen
    host, port = addr.rsplit(":", 1)
    assert node.site is not None
    try:
        loop = asyncio.get_running_loop()
        slow = socket.create_connection((host, int(port)), timeout=30)
        slow.sendall(b"GET /health HTTP/1.1\r\nHo")  # ... and nothing more
        # others are served while it dangles
        await _still_serves(addr, "during")
        # the node drops it: recv sees the close (no answer was ever sent)
        got = await loop.run_in_executor(None, slow.recv, 1024)
        assert got == b""
        slow.close()
        assert node.site.stats.slow >= 1
        await _still_serves(addr)
    finally:
        await node.stop()


async def test_connections_over_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    node = await _node(tmp_path, max_connections=6)
    addr = node.cfg.listen
    host, port = addr.rsplit(":", 1)
    assert node.site is not None
    held: list[socket.socket] = []
    try:
        loop = asyncio.get_running_loop()

        def fill() -> None:
            while node.site is not None and node.site.stats.refused == 0:
                s = socket.create_connection((host, int(port)), timeout=30)
                held.append(s)
                try:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    if s.recv(1024) == b"":  # this one was over the cap: closed
                        return
                except (ConnectionResetError, BrokenPipeError):  # ... or reset
                    return

        await loop.run_in_executor(None, fill)
        assert node.site.stats.refused >= 1
        assert node.site.stats.open <= 6
        for s in held:
            s.close()
        held.clear()

        def served() -> bytes:
            return _raw(addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

        # once the held connections are gone, new ones are served again
        while not (await loop.run_in_executor(None, served)).startswith(b"HTTP/1.1 200"):
            await asyncio.sleep(0.05)
        await _still_serves(addr)
    finally:
        for s in held:
            s.close()
        await node.stop()


async def test_scan_and_json_limits(tmp_path: Path) -> None:
    node = await _node(tmp_path, max_scan_limit=50, max_json_bytes=2048)
    addr = node.cfg.listen
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{addr}/v1/scan?start=&limit=51") as r:
                assert r.status == 400 and "limit" in (await r.json())["message"]
            async with http.get(f"http://{addr}/v1/scan?start=&limit=50") as r:
                assert r.status == 200
            big = json.dumps({"op": "split", "key": "m" * 4000})
            async with http.post(f"http://{addr}/v1/ctrl/command", data=big,
                                 headers={"X-Kvraft-Secret": "s"}) as r:
                assert r.status == 413, await r.text()
        await _still_serves(addr)
    finally:
        await node.stop()


async def test_peer_frames_over_the_limits_are_refused(tmp_path: Path) -> None:
    node = await _node(tmp_path, peer_max_frame_bytes=1 << 16, peer_max_frame_items=64)
    addr = node.cfg.listen
    assert node.transport is not None
    stats = node.transport.stats
    try:
        async with aiohttp.ClientSession() as http:
            # too many messages in one frame: dropped and counted, the stream stays
            msgs = [Message(MsgType.HEARTBEAT, to=1, frm=2, term=0) for _ in range(65)]
            async with http.ws_connect(f"http://{addr}/raft/v1/stream", headers=PEER) as ws:
                bad = stats.bad_frames
                await ws.send_bytes(encode_frame(1, msgs))
                await ws.send_bytes(encode_frame(1, msgs[:1]))  # a good one after it
                while stats.bad_frames == bad:
                    await asyncio.sleep(0.01)
                # too many entries in one message
                entries = [Entry(i, 1, b"") for i in range(1, 66)]
                bad = stats.bad_frames
                await ws.send_bytes(encode_frame(1, [Message(MsgType.APP, to=1, frm=2,
                                                             term=0, entries=entries)]))
                while stats.bad_frames == bad:
                    await asyncio.sleep(0.01)
                assert not ws.closed
            # a frame over peer_max_frame_bytes: the node closes the stream (1009)
            async with http.ws_connect(f"http://{addr}/raft/v1/stream", headers=PEER) as ws:
                await ws.send_bytes(msgpack.packb([1, 1, [b"x" * (1 << 17)]]))
                msg = await ws.receive(timeout=30)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009
        await _still_serves(addr)
    finally:
        await node.stop()


async def test_a_snapshot_over_max_snapshot_bytes_is_refused(tmp_path: Path) -> None:
    node = await _node(tmp_path, max_snapshot_bytes=1 << 20)
    addr = node.cfg.listen
    try:
        headers = {**PEER, "X-Kvraft-Group": "1", "X-Kvraft-Term": "1",
                   "X-Kvraft-Snapshot-Index": "5", "X-Kvraft-Snapshot-Term": "1",
                   "X-Kvraft-Snapshot-Conf": json.dumps({"voters": [1]}),
                   "X-Kvraft-Size": str(1 << 30), "X-Kvraft-Sha256": "0" * 64}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{addr}/raft/v1/snapshot", data=b"x",
                                 headers=headers) as r:
                assert r.status == 413 and "max_snapshot_bytes" in await r.text()
        assert not list((node.replicas[1].dir / "snapshots").glob("incoming-*"))
        await _still_serves(addr)
    finally:
        await node.stop()


async def test_fault_injection_is_off_unless_enabled(tmp_path: Path) -> None:
    node = await _node(tmp_path)
    addr = node.cfg.listen
    try:
        async with aiohttp.ClientSession() as http:
            for method in ("GET", "PUT", "DELETE"):
                async with http.request(method, f"http://{addr}/v1/admin/faults",
                                        headers={"X-Kvraft-Secret": "s"}, json={}) as r:
                    assert r.status in (404, 405), (method, r.status)
    finally:
        await node.stop()


def test_range_chunks_are_checked_before_they_are_installed() -> None:
    from kvraft.kv.shards import KEYS, SESSIONS, Pull
    from kvraft.runtime.migration import _chunk_command, chunk_digest

    p = Pull(range_id=3, start="a", end="m", src_gid=1, phase=KEYS, cursor=None)
    items = [["apple", "1"], ["banana", "\ud800 lone surrogate"]]
    cmd, size = _chunk_command({"items": items, "sha256": chunk_digest(items), "last": True},
                               KEYS, 5, p, None)
    assert cmd.items == (("apple", "1"), ("banana", "\ud800 lone surrogate")) and size > 0
    bad = [
        {"items": [["apple", "2"], items[1]], "sha256": chunk_digest(items), "last": True},
        {"items": items, "last": True},  # no checksum
        {"items": items[:1], "sha256": chunk_digest(items), "last": True},  # truncated
        {"items": [["apple", 1]], "sha256": chunk_digest([["apple", 1]]), "last": True},
        {"items": "apple", "sha256": chunk_digest("apple"), "last": True},
        {"items": items, "sha256": chunk_digest(items), "last": "yes"},
        {"sha256": chunk_digest(items), "last": True},
    ]
    for doc in bad:
        try:
            _chunk_command(doc, KEYS, 5, p, None)
        except (KeyError, ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {doc}")
    sessions = [["client-1", 4, [[1, 0, False, "apple"]]]]
    cmd, _ = _chunk_command({"sessions": sessions, "sha256": chunk_digest(sessions),
                             "last": True, "next_cursor": None}, SESSIONS, 5, p, None)
    assert cmd.sessions == (("client-1", 4, ((1, 0, False, "apple"),)),)
    forged = [["client-1", 4, [[1, 0, False, "apple"]], "extra"]]
    try:
        _chunk_command({"sessions": forged, "sha256": chunk_digest(forged), "last": True},
                       SESSIONS, 5, p, None)
    except (KeyError, ValueError, TypeError):
        pass
    else:
        raise AssertionError("accepted a malformed session row")


async def test_every_route_has_a_role(tmp_path: Path) -> None:
    from kvraft.transport.auth import ROUTES

    node = await _node(tmp_path)
    try:
        assert node._runner is not None
        routes = {(r.method, r.resource.canonical) for r in node._runner.app.router.routes()
                  if r.resource is not None and r.method != "HEAD"}
        assert routes, "no routes"
        assert routes <= set(ROUTES), routes - set(ROUTES)
    finally:
        await node.stop()
