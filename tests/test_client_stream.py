"""The client stream (``/v1/stream``: msgpack requests over one websocket) against a real
node in-process: answers match the HTTP API, bad input closes the stream or gets a 400
and never hurts the node, and the client falls back to HTTP where there is no stream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web

from kvraft import AsyncClient, Client, errors
from kvraft.config import Limits, NodeSettings
from kvraft.runtime.node import Node
from kvraft.testing import free_port
from kvraft.testing.inprocess import single_node


async def _node(tmp_path: Path, limits: Limits | None = None) -> Node:
    return await single_node(tmp_path / "n1", NodeSettings(limits=limits or Limits()))


async def _exchange(ws: aiohttp.ClientWebSocketResponse, reqs: list[Any]) -> dict[int, Any]:
    await ws.send_bytes(msgpack.packb(reqs))
    got: dict[int, Any] = {}
    while len(got) < len(reqs):
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        for rid, status, body in msgpack.unpackb(msg.data):
            got[rid] = (status, body)
    return got


async def test_stream_answers_as_http_does_and_batches_out_of_order_writes(
        tmp_path: Path) -> None:
    node = await _node(tmp_path)
    addr = node.cfg.listen
    try:
        cid = uuid.uuid4().hex
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"http://{addr}/v1/stream") as ws:
            # one message, 32 writes of one session in reverse order, then reads
            writes = [[i, "put", f"k{i}", f"v{i}", cid, i, 1, 0, 30_000]
                      for i in range(32, 0, -1)]
            got = await _exchange(ws, writes)
            assert all(got[i] == (200, {"ok": True}) for i in range(1, 33)), got
            # reads served concurrently with writes of other keys in the same message
            got = await _exchange(ws, [[100 + i, "get", f"k{i}", None, "", 0, 0, 0, 0]
                                       for i in range(3, 33)] +
                                  [[200, "get", "absent", None, "", 0, 0, 0, 0],
                                   [201, "delete", "k1", None, cid, 33, 33, 0, 0],
                                   [202, "append", "k2", "+", cid, 34, 34, 0, 0]])
            assert all(got[100 + i] == (200, {"key": f"k{i}", "value": f"v{i}"})
                       for i in range(3, 33)), got
            assert got[200][0] == 404 and got[200][1]["error"] == "not_found"
            assert got[201] == (200, {"ok": True, "deleted": True})
            assert got[202] == (200, {"ok": True})
            # a retried write of the same session seq takes effect once
            got = await _exchange(ws, [[300, "append", "k2", "+", cid, 34, 34, 0, 0]])
            assert got[300] == (200, {"ok": True})
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{addr}/v1/kv/k2") as r:
                assert (await r.json())["value"] == "v2+"
            async with http.get(f"http://{addr}/v1/kv/k1") as r:
                assert r.status == 404
    finally:
        await node.stop()


async def test_bad_stream_input_is_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    limits = Limits(max_key_bytes=64, max_value_bytes=1024, stream_max_message_bytes=4096,
                    stream_max_batch=8)
    node = await _node(tmp_path, limits)
    addr = node.cfg.listen
    url = f"http://{addr}/v1/stream"
    try:
        async with aiohttp.ClientSession() as http:
            # per-request errors: a 400/413 answer, the stream stays open
            async with http.ws_connect(url) as ws:
                got = await _exchange(ws, [
                    [1, "nope", "k", None, "", 0, 0, 0, 0],
                    [2, "put", "", "v", "", 0, 0, 0, 0],
                    [3, "put", "k" * 65, "v", "", 0, 0, 0, 0],
                    [4, "put", "k", "v" * 1025, "", 0, 0, 0, 0],
                    [5, "put", "k", 7, "", 0, 0, 0, 0],
                    [6, "put", "k", "v", "c", 0, 0, 0, 0],      # session with seq 0
                    [7, "put", "k", "v", "c", 2, 3, 0, 0],      # ack beyond seq
                    [8, "get", "k", None, "", 0, 0, -1, 0],     # negative configuration
                ])
                assert {rid: s for rid, (s, _) in got.items()} == {
                    1: 400, 2: 400, 3: 413, 4: 413, 5: 400, 6: 400, 7: 400, 8: 400}, got
                got = await _exchange(ws, [[9, "get", "k", None, "", 0, 0, 0, 0, "extra"],
                                           [10, "get", "k", None, "", 0, 0, 0, 700_000],
                                           [11, ["op"], "k", None, "", 0, 0, 0, 0],
                                           [12, "get", ["k"], None, "", 0, 0, 0, 0]])
                assert [got[i][0] for i in (9, 10, 11, 12)] == [400] * 4, got
                got = await _exchange(ws, [[13, "put", "k", "fine", "", 0, 0, 0, 0]])
                assert got[13] == (200, {"ok": True})
            # whole-message errors close the stream with a reason
            for payload, code in ((b"\xc1", 1003), (msgpack.packb({"a": 1}), 1003),
                                  (msgpack.packb([[[[]] * 65]]), 1003),
                                  (msgpack.packb([]), 1008), (msgpack.packb(["x"]), 1008),
                                  (msgpack.packb([[1, "get", "k", None, "", 0, 0, 0, 0]] * 9),
                                   1009),
                                  (b"\x00" * 5000, 1009)):
                async with http.ws_connect(url) as ws:
                    await ws.send_bytes(payload)
                    msg = await ws.receive(timeout=30)
                    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == code, (
                        payload[:20], msg, ws.close_code)
            async with http.ws_connect(url) as ws:
                await ws.send_str("text")
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1003
        assert node.client_stream.bad_messages == 8
        async with AsyncClient([addr], timeout_s=30.0) as c:
            assert await c.get("k") == "fine"
            await c.put("k", "after")
            assert await c.get("k") == "after"
        assert node.replicas[1].failed.done() is False
    finally:
        await node.stop()


async def test_clients_use_the_stream_and_fall_back_to_http(tmp_path: Path) -> None:
    node = await _node(tmp_path)
    addr = node.cfg.listen
    try:
        async with AsyncClient([addr], timeout_s=30.0) as c:
            await asyncio.gather(*(c.put(f"s{i}", str(i)) for i in range(50)))
            assert await asyncio.gather(*(c.get(f"s{i}") for i in range(50))) == [
                str(i) for i in range(50)]
            assert list(c._streams) == [addr] and not c._no_stream
            assert len(node.client_stream.active) == 1
        async with AsyncClient([addr], timeout_s=30.0, stream=False) as c:
            await c.put("h", "http")
            assert await c.get("h") == "http" and not c._streams
        async with AsyncClient([addr], timeout_s=30.0) as c:
            with pytest.raises(errors.TooLarge):
                await c.put("x" * 5000, "v")
            with pytest.raises(errors.InvalidArgument, match="UTF-8"):
                await c.put("k", "\ud800")  # refused before it reaches the stream
            await c.put("k", "still fine")
            assert await c.get("k") == "still fine"

        def sync_side() -> list[str | None]:
            with Client([addr], timeout_s=30.0) as sc:
                sc.put("sync", "yes")
                return [sc.get("sync"), sc.get("s7")]

        assert await asyncio.to_thread(sync_side) == ["yes", "7"]
    finally:
        await node.stop()
    # A node whose stream limits are below what the client sends: it falls back to HTTP.
    node = await _node(tmp_path / "small", Limits(stream_max_batch=2))
    try:
        async with AsyncClient([node.cfg.listen], timeout_s=30.0) as c:
            await asyncio.gather(*(c.put(f"b{i}", str(i)) for i in range(20)))
            assert await c.get("b7") == "7" and node.cfg.listen in c._no_stream
    finally:
        await node.stop()
    # A node without the stream (an older version): the client speaks HTTP to it.
    app = web.Application()
    seen: list[str] = []

    async def kv(request: web.Request) -> web.Response:
        seen.append(request.method)
        if request.method == "PUT":
            return web.json_response({"ok": True})
        return web.json_response({"key": "k", "value": "old"})

    async def shards(request: web.Request) -> web.Response:
        return web.json_response({"config": {
            "num": 1, "ranges": [[1, "", None, 1, 1]], "groups": {"1": {"1": old_addr}},
            "next_range_id": 2}})

    app.router.add_route("*", "/v1/kv/{key}", kv)
    app.router.add_get("/v1/shards", shards)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    old_addr = f"127.0.0.1:{port}"
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AsyncClient([old_addr], timeout_s=10.0) as c:
            await c.put("k", "v")
            assert await c.get("k") == "old"
            assert old_addr in c._no_stream and seen == ["PUT", "GET"]
    finally:
        await runner.cleanup()
