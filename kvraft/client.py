"""The Python client library: :class:`AsyncClient` (asyncio) and :class:`Client` (sync).

Both read the shard map (the controller's newest configuration) from any node, route
each key straight to the leader of the group that owns its range, and refresh the map
when a group answers ``wrong_group`` (SHARDING.md rule 3: if the group is behind the
client's map, the client backs off and retries the same group instead). Every write
gets a session identity (client id, sequence number) that stays the same across
retries, so a retried write takes effect exactly once — also across leader changes,
node restarts and the move of its range to another group. Sessions are per group
(``<id>.<gid>``); a write keeps the session it started with wherever it is retried.

Key-value operations travel on one websocket per node (``/v1/stream``, msgpack, many
requests in flight; see :mod:`kvraft.transport.client_stream`); ``stream=False`` sends
them as JSON HTTP requests instead, and a node that has no stream is spoken to in HTTP.
Scans, the shard map and status are HTTP.

``scan`` walks the ranges in key order; each range's part is linearizable, but a scan
across ranges is not one atomic snapshot.

Errors (``kvraft.errors``): ``InvalidArgument``/``TooLarge`` for a bad request (never
retried), ``Unavailable`` when the cluster could not answer before the deadline, and
``OutcomeUnknown`` when a write timed out after it may have reached a leader.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgpack
import yarl

from kvraft import errors
from kvraft.ctrler.config import Configuration
from kvraft.recorder import HistoryRecorder
from kvraft.transport.client_stream import STREAM_PATH
from kvraft.transport.tls import TLS, client_ssl, scheme

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0


def _norm_addr(a: str) -> str:
    a = a.strip()
    for prefix in ("http://", "https://"):
        if a.startswith(prefix):
            a = a[len(prefix):]
    a = a.rstrip("/")
    if not a or ":" not in a:
        raise errors.InvalidArgument(f"bad node address {a!r}: expected HOST:PORT")
    return a


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise errors.InvalidArgument("key must be a non-empty string")
    return _utf8(key, "key")


def _check_value(value: object) -> str:
    if not isinstance(value, str):
        raise errors.InvalidArgument("value must be a string")
    return _utf8(value, "value")


def _utf8(s: str, what: str) -> str:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidArgument(f"{what} is not valid UTF-8 (a lone surrogate)") from None
    return s


@dataclass(slots=True)
class _Session:
    client_id: str
    next_seq: int = 1
    inflight: set[int] = field(default_factory=set)

    def begin(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.inflight.add(seq)
        return seq

    def ack_below(self) -> int:
        return min(self.inflight) if self.inflight else self.next_seq


def _kv_path(prefix: str, key: str) -> str:
    return prefix + urllib.parse.quote(key, safe="")


class _suppress_unavailable:
    """``with _suppress_unavailable():`` — a failed map refresh is retried later."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: object, tb: object) -> bool:
        return isinstance(exc, errors.Unavailable)


class _SessionLost(errors.KvraftError):
    """The server no longer knows this session, and this write never reached it."""


class _Attempt:
    """What one HTTP attempt told us."""

    __slots__ = ("status", "body", "leader")

    def __init__(self, status: int, body: dict[str, Any], leader: str | None) -> None:
        self.status = status
        self.body = body
        self.leader = leader


class _NotSent(ConnectionError):
    """The request never left the client (no connection could be made)."""


class _Stream:
    """One websocket to one node carrying many requests (see ``client_stream``).

    Requests made in the same turn of the event loop go out as one message; answers are
    matched to waiters by id. When the stream breaks, every waiter gets
    ``ConnectionResetError`` (for a write: outcome unknown, retried in its session).
    """

    MAX_MESSAGE_BYTES = 1 << 20  # well under the node's stream_max_message_bytes
    MAX_BATCH = 256

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed = False
        self.refused = False
        self.pending: dict[int, asyncio.Future[_Attempt]] = {}
        self.out: list[tuple[list[Any], int]] = []
        self.ids = itertools.count(1)
        self.wake = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())
        self.writer = asyncio.ensure_future(self._write())

    async def call(self, fields: list[Any], size: int, timeout_s: float) -> _Attempt:
        if self.closed:
            raise ConnectionResetError("client stream closed")
        rid = next(self.ids)
        fut: asyncio.Future[_Attempt] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.out.append(([rid, *fields], size))
        self.wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self.pending.pop(rid, None)

    async def _write(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.out:
                    n, size = 0, 0
                    while (n < len(self.out) and n < self.MAX_BATCH
                           and (n == 0 or size + self.out[n][1] < self.MAX_MESSAGE_BYTES)):
                        size += self.out[n][1]
                        n += 1
                    batch = [req for req, _ in self.out[:n]]
                    del self.out[:n]
                    await self.ws.send_bytes(msgpack.packb(batch, use_bin_type=True))
        except Exception as e:  # whatever stops the writer fails the stream, never hangs it
            self._fail(f"send failed: {type(e).__name__}: {e}")

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                for ans in msgpack.unpackb(msg.data, raw=False):
                    rid, status, body = ans
                    fut = self.pending.get(rid)
                    if fut is not None and not fut.done():
                        if not isinstance(body, dict):
                            body = {"error": "bad_response"}
                        fut.set_result(_Attempt(int(status), body, body.get("leader")))
        except (ValueError, TypeError, msgpack.UnpackException, aiohttp.ClientError,
                ConnectionError):
            pass
        finally:
            if self.ws.close_code in (1008, 1009):  # the node refused what we sent
                self.refused = True
            self._fail(f"closed ({self.ws.close_code})")

    def _fail(self, why: str) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(f"client stream {why}"))
        self.out.clear()
        me = asyncio.current_task()
        for t in (self.reader, self.writer):
            if t is not me:
                t.cancel()
        if not self.ws.closed:
            self._closing = asyncio.ensure_future(self.ws.close())

    async def close(self) -> None:
        self.closed = True
        await self.ws.close()
        for t in (self.reader, self.writer):
            t.cancel()
        await asyncio.gather(self.reader, self.writer, return_exceptions=True)


class AsyncClient:
    """An asyncio client for a kvraft cluster. Use one per event loop.

    ``addresses``: one or more ``HOST:PORT`` of cluster nodes (any of them).
    ``timeout_s``: the deadline of each operation, retries included.
    ``recorder``: if given, every operation is recorded (see docs/history-format.md).
    ``tls``: the cluster CA (and a client certificate, if any) for a TLS cluster
    (``kvraft.transport.tls.from_paths(ca, cert, key)``); None speaks plain HTTP.
    ``token``: a client token (``shardctl token create``), sent as ``Authorization:
    Bearer``; a refused one raises :class:`~kvraft.errors.Unauthorized` (or
    :class:`~kvraft.errors.Forbidden` for a call its role does not allow).
    ``read_from``: where gets and scans go. ``"leader"`` (the default) sends them to
    the group's leader. ``"any"`` spreads them over all the group's members and
    ``"follower"`` over the members other than the leader it knows: a follower asks its
    leader for a read index and serves the read from its own state once it has applied
    that far, so every read stays linearizable and the leader does none of the serving.
    """

    def __init__(self, addresses: Sequence[str] | str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 attempt_timeout_s: float = 1.0, recorder: HistoryRecorder | None = None,
                 name: str | None = None, stream: bool = True, tls: TLS | None = None,
                 token: str | None = None, read_from: str = "leader") -> None:
        if read_from not in ("leader", "any", "follower"):
            raise errors.InvalidArgument('read_from must be "leader", "any" or "follower"')
        self.read_from = read_from
        if isinstance(addresses, str):
            addresses = addresses.split(",")
        self.addresses = [_norm_addr(a) for a in addresses]
        if not self.addresses:
            raise errors.InvalidArgument("at least one node address is required")
        if timeout_s <= 0 or attempt_timeout_s <= 0:
            raise errors.InvalidArgument("timeouts must be positive")
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.recorder = recorder
        self.name = name or f"c-{uuid.uuid4().hex[:8]}"
        self._rr = itertools.count()
        self._client_id = uuid.uuid4().hex
        self._sessions: dict[int, _Session] = {}
        self._leaders: dict[int, str] = {}
        self._map: Configuration | None = None
        self._map_lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self.stream = stream
        self.tls = tls
        self._scheme = scheme(tls)
        self._headers = {} if not token else {"Authorization": f"Bearer {token.strip()}"}
        self._streams: dict[str, _Stream] = {}
        self._opening: dict[str, asyncio.Future[_Stream | None]] = {}
        self._no_stream: set[str] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for st in streams:
            await st.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False,
                                               ssl=client_ssl(self.tls)),
                timeout=aiohttp.ClientTimeout(total=None), headers=self._headers)
        return self._http

    # --- public operations ----------------------------------------------------------

    async def get(self, key: str) -> str | None:
        """The key's value, or None if absent. Linearizable."""
        key = _check_key(key)
        rec = self._invoke("get", key, None)
        try:
            a = await self._call("get", "GET", _kv_path("/v1/kv/", key), key, None, write=None)
        except errors.KvraftError as e:
            self._complete(rec, "fail" if not isinstance(e, errors.OutcomeUnknown) else "unknown")
            raise
        value = a.body.get("value") if a.status == 200 else None
        self._complete(rec, "ok", value)
        return value

    async def put(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``."""
        await self._write("put", "PUT", "/v1/kv/", _check_key(key), _check_value(value))

    async def append(self, key: str, value: str) -> None:
        """Append ``value`` to the key's value (creating the key if absent)."""
        await self._write("append", "POST", "/v1/append/", _check_key(key), _check_value(value))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        a = await self._write("delete", "DELETE", "/v1/kv/", _check_key(key), None)
        return bool(a.body.get("deleted"))

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000
                   ) -> list[tuple[str, str]]:
        """Up to ``limit`` (key, value) pairs with ``start <= key < end``, in key order.

        Each range's part is read linearizably from the group that owns it; the scan as a
        whole is not one atomic snapshot across ranges.
        """
        if not isinstance(start, str) or (end is not None and not isinstance(end, str)):
            raise errors.InvalidArgument("start and end must be strings")
        if not isinstance(limit, int) or limit < 1:
            raise errors.InvalidArgument("limit must be a positive integer")
        out: list[tuple[str, str]] = []
        cur = start
        while len(out) < limit and (end is None or cur < end):
            want = min(limit - len(out), 10_000)
            q = {"start": cur, "limit": str(want)}
            if end is not None:
                q["end"] = end
            if self.read_from != "leader":
                q["read"] = "follower"
            path = "/v1/scan?" + urllib.parse.urlencode(q)
            a = await self._call(None, "GET", path, cur, None, write=None, scan=True)
            items = [(str(k), str(v)) for k, v in a.body.get("items", [])]
            out.extend(items)
            range_end = a.body.get("range_end")
            if len(items) >= want:
                cur = items[-1][0] + "\x00"  # the next key after the last one returned
            elif range_end is None:
                break
            else:
                cur = str(range_end)  # rule 9: go on from the range's end
        return out[:limit]

    async def shard_map(self, fresh: bool = False) -> Configuration:
        """The configuration the client routes by (``fresh``: ask the controller now)."""
        if fresh or self._map is None:
            await self._refresh_map(0)
        assert self._map is not None
        return self._map

    async def status(self, address: str | None = None) -> dict[str, Any]:
        """The status document of one node (default: the first address)."""
        addr = _norm_addr(address) if address else self.addresses[0]
        url = f"{self._scheme}://{addr}/v1/status"
        try:
            async with self._session().get(
                    url, timeout=aiohttp.ClientTimeout(total=self.attempt_timeout_s)) as r:
                doc: dict[str, Any] = await r.json()
                _raise_denied(r.status, doc)
                return doc
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise errors.Unavailable(f"{addr}: {e or type(e).__name__}") from None

    # --- machinery ---------------------------------------------------------------------

    # --- routing ---------------------------------------------------------------------

    async def _refresh_map(self, seen: int) -> None:
        """Fetch the newest configuration (from any node) unless one newer than ``seen``
        arrived meanwhile."""
        async with self._map_lock:
            if self._map is not None and self._map.num > seen:
                return
            addrs = list(self.addresses)
            if self._map is not None:
                addrs += [a for g in self._map.group_ids()
                          for a in self._map.members(g).values() if a not in addrs]
            last = ""
            for i in range(len(addrs)):
                addr = addrs[(next(self._rr) + i) % len(addrs)]
                try:
                    async with self._session().get(
                            f"{self._scheme}://{addr}/v1/shards?fresh=1",
                            timeout=aiohttp.ClientTimeout(total=self.attempt_timeout_s)) as r:
                        doc = await r.json()
                        _raise_denied(r.status, doc)
                    cfg = Configuration.from_dict(doc["config"])
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError,
                        TypeError) as e:
                    last = f"{addr}: {type(e).__name__} {e}"
                    continue
                if self._map is None or cfg.num >= self._map.num:
                    self._map = cfg
                return
            raise errors.Unavailable(f"no node answered for the shard map ({last})")

    async def _route(self, key: str) -> tuple[int, list[str], int]:
        """(group, its members' addresses, configuration number) for ``key``."""
        if self._map is None:
            await self._refresh_map(-1)
        assert self._map is not None
        cfg = self._map
        gid = cfg.range_for(key).gid
        members = [a for _, a in sorted(cfg.members(gid).items())]
        return gid, members, cfg.num

    def _session_for(self, gid: int) -> _Session:
        s = self._sessions.get(gid)
        if s is None:
            s = self._sessions[gid] = _Session(f"{self._client_id}.{gid}")
        return s

    # --- machinery ---------------------------------------------------------------------

    async def _write(self, op: str, method: str, path: str, key: str,
                     value: str | None) -> _Attempt:
        rec = self._invoke(op, key, value)
        try:
            gid = (await self._route(key))[0]
        except errors.KvraftError:
            self._complete(rec, "fail")
            raise
        for fresh in (False, True):
            if fresh:  # the server forgot our session before this write reached it
                self._client_id = uuid.uuid4().hex
                self._sessions.clear()
            sess = self._session_for(gid)
            seq = sess.begin()
            try:
                a = await self._call(op, method, _kv_path(path, key), key, value,
                                     write=(sess, seq))
            except _SessionLost as e:
                if fresh:
                    self._complete(rec, "fail")
                    raise errors.Unavailable(f"session refused twice: {e}") from None
                continue
            except errors.OutcomeUnknown:
                self._complete(rec, "unknown")
                raise
            except errors.KvraftError:
                self._complete(rec, "fail")
                raise
            finally:
                sess.inflight.discard(seq)
            self._complete(rec, "ok")
            return a
        raise AssertionError("unreachable")

    async def _call(self, op: str | None, method: str, path: str, key: str, value: str | None,
                    write: tuple[_Session, int] | None, scan: bool = False) -> _Attempt:
        st = _CallState()
        try:
            return await self._call_loop(op, method, path, key, value, write, scan, st)
        except errors.Unauthorized as e:
            if st.maybe_applied:
                # refused now (any path: the stream, the map, an answer), but an earlier
                # attempt of this write may have been applied
                raise errors.OutcomeUnknown(f"write outcome unknown: an earlier attempt may "
                                            f"have been applied, then: {e}") from None
            raise

    async def _call_loop(self, op: str | None, method: str, path: str, key: str,
                         value: str | None, write: tuple[_Session, int] | None, scan: bool,
                         st: _CallState) -> _Attempt:
        deadline = time.monotonic() + self.timeout_s
        last_error = "no node answered"
        backoff = 0.01
        wrong = 0
        redirect: str | None = None
        hops = 0
        spread = write is None and self.read_from != "leader"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                gid, members, num = await self._route(key)
            except errors.Unavailable as e:
                last_error = str(e)
                members, gid, num = [], 0, 0
            if not members:  # nothing serves the key yet: the map may be stale
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.2)
                with _suppress_unavailable():
                    await self._refresh_map(num)
                continue
            addr = self._leaders.get(gid)
            if addr is not None and addr not in members:
                del self._leaders[gid]  # that node left the group (a membership change)
                addr = None
            if redirect is not None:
                addr, redirect = redirect, None  # where the last answer sent us
            elif spread:
                # A follower read: any member serves it ("follower": any but the
                # leader we know of).
                pool = [m for m in members if m != addr] if self.read_from == "follower" else []
                pool = pool or members
                addr = pool[next(self._rr) % len(pool)]
            addr = addr or members[next(self._rr) % len(members)]
            timeout_ms = max(1, int(min(remaining, self.attempt_timeout_s) * 1000))
            session = None
            if write is not None:
                sess, seq = write
                session = (sess.client_id, seq, min(sess.ack_below(), seq))
            try:
                a = await self._attempt(addr, op, method, path, key, value, num, timeout_ms,
                                        session, min(remaining, self.attempt_timeout_s) + 0.5,
                                        spread)
            except (aiohttp.ClientConnectorError, ConnectionRefusedError, _NotSent) as e:
                last_error = f"{addr}: {e}"
                self._forget_leader(gid, addr)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                st.maybe_applied = st.maybe_applied or write is not None
                last_error = f"{addr}: {type(e).__name__} {e}"
                self._forget_leader(gid, addr)
            else:
                if a.status < 300 or (a.status == 404 and write is None and not scan):
                    if not spread:  # (a follower read may have been served by a follower)
                        self._leaders[gid] = addr
                    return a
                code = a.body.get("error", "")
                if a.status == 307 and a.leader:
                    redirect = self._leaders[gid] = _norm_addr(a.leader)
                    last_error = f"{addr} redirected to leader {a.leader}"
                    hops += 1
                    if redirect not in members and hops == 1:
                        with _suppress_unavailable():  # a new member leads: learn the map
                            await self._refresh_map(num)
                    if hops % 8 == 0:  # a redirect loop (leadership moving): back off
                        await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                        backoff = min(backoff * 2, 0.2)
                    continue
                elsewhere = a.body.get("redirect")
                if code == "wrong_group" and isinstance(elsewhere, str) and elsewhere:
                    # The node is not (or no longer) a member of the group: go where it says.
                    redirect = self._leaders[gid] = _norm_addr(elsewhere)
                    last_error = f"{addr}: not a member of group {gid}, sent to {elsewhere}"
                    hops += 1
                    with _suppress_unavailable():
                        await self._refresh_map(num)
                    if hops % 8 == 0:
                        await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                        backoff = min(backoff * 2, 0.2)
                    continue
                if code == "wrong_group":
                    # Rule 3: a group at or behind our map is lagging or still pulling:
                    # retry it (and look at the map again now and then); a group ahead
                    # of our map means the map is stale: refresh it.
                    last_error = f"{addr}: wrong_group at configuration {a.body.get('num')}"
                    wrong += 1
                    if int(a.body.get("num", 0)) > num or wrong % 8 == 0:
                        with _suppress_unavailable():
                            await self._refresh_map(num)
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                    backoff = min(backoff * 2, 0.2)
                    continue
                _raise_denied(a.status, a.body)
                if a.status in (400, 413):
                    cls = errors.TooLarge if a.status == 413 else errors.InvalidArgument
                    raise cls(a.body.get("message", code))
                if a.status == 409 and code == "session_expired":
                    if not st.maybe_applied:
                        raise _SessionLost(a.body.get("message", code))
                    raise errors.SessionExpired(a.body.get("message", code))
                if code == "outcome_unknown" or (a.status >= 500 and code not in (
                        "no_leader", "unavailable")):
                    st.maybe_applied = st.maybe_applied or write is not None
                last_error = f"{addr}: {a.status} {code} {a.body.get('message', '')}".strip()
                self._forget_leader(gid, addr)
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 0.2)
        if st.maybe_applied:
            raise errors.OutcomeUnknown(f"write outcome unknown after {self.timeout_s:.1f}s "
                                        f"(last: {last_error})")
        raise errors.Unavailable(f"no answer within {self.timeout_s:.1f}s (last: {last_error})")

    def _forget_leader(self, gid: int, addr: str) -> None:
        """``addr`` failed: if it is the leader we know, forget it (a follower that
        failed a follower read says nothing about the leader)."""
        if self._leaders.get(gid) == addr:
            del self._leaders[gid]

    async def _attempt(self, addr: str, op: str | None, method: str, path: str, key: str,
                       value: str | None, num: int, timeout_ms: int,
                       session: tuple[str, int, int] | None, timeout_s: float,
                       follower: bool = False) -> _Attempt:
        if op is not None and self.stream and addr not in self._no_stream:
            st = await self._stream_to(addr)
            if st is not None:
                cid, seq, ack = session or ("", 0, 0)
                fields: list[Any] = [op, key, value, cid, seq, ack, num, timeout_ms]
                if follower:
                    fields.append("follower")
                return await st.call(fields, len(key) + len(value or ""), timeout_s)
        if follower and op == "get":
            path += "?read=follower"
        headers = {"X-Kvraft-Timeout-Ms": str(timeout_ms), "X-Kvraft-Config": str(num)}
        if session is not None:
            headers.update({"X-Kvraft-Client": session[0], "X-Kvraft-Seq": str(session[1]),
                            "X-Kvraft-Ack": str(session[2])})
        url = yarl.URL(f"{self._scheme}://{addr}{path}", encoded=True)
        data = value.encode("utf-8") if value is not None else None
        if data is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        async with self._session().request(
                method, url, data=data, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"error": "bad_response", "message": raw[:200].decode("utf-8", "replace")}
            if not isinstance(body, dict):
                body = {"error": "bad_response"}
            return _Attempt(r.status, body, body.get("leader") or r.headers.get("X-Kvraft-Leader"))

    async def _stream_to(self, addr: str) -> _Stream | None:
        """The open stream to ``addr`` (one per node, opened once however many ask at
        once); None if the node has no stream endpoint (then HTTP is used)."""
        st = self._streams.get(addr)
        if st is not None and not st.closed:
            return st
        if st is not None and st.refused:  # its limits are below ours: speak HTTP to it
            self._no_stream.add(addr)
            return None
        fut = self._opening.get(addr)
        if fut is None:
            fut = self._opening[addr] = asyncio.ensure_future(self._open_stream(addr))
            fut.add_done_callback(lambda _: self._opening.pop(addr, None))
        return await asyncio.shield(fut)

    async def _open_stream(self, addr: str) -> _Stream | None:
        try:
            async with asyncio.timeout(self.attempt_timeout_s):
                ws = await self._session().ws_connect(
                    f"{self._scheme}://{addr}{STREAM_PATH}", autoping=True, max_msg_size=0,
                    compress=0)
        except aiohttp.WSServerHandshakeError as e:
            if e.status in (401, 403):
                cls = errors.Forbidden if e.status == 403 else errors.Unauthorized
                raise cls(f"{addr}: the stream was refused ({e.status}): check the "
                          "client token") from None
            if e.status not in (404, 405):
                raise _NotSent(f"{addr}: stream refused with {e.status}") from None
            self._no_stream.add(addr)  # a node without the stream
            return None
        except TimeoutError:
            raise _NotSent(f"{addr}: no stream within {self.attempt_timeout_s:.1f}s") from None
        st = self._streams[addr] = _Stream(ws)
        return st

    def _invoke(self, op: str, key: str, value: str | None) -> int | None:
        if self.recorder is None:
            return None
        return self.recorder.invoke(self.name, op, key, value)

    def _complete(self, rec: int | None, outcome: str, result: str | None = None) -> None:
        if self.recorder is not None and rec is not None:
            self.recorder.complete(rec, outcome, result)


class _CallState:
    __slots__ = ("maybe_applied",)

    def __init__(self) -> None:
        self.maybe_applied = False
        """An attempt of this write may have reached a leader (so it may have applied)."""


def _raise_denied(status: int, body: Any) -> None:
    """A 401 or 403 is final: the credentials will not get better by retrying."""
    if status in (401, 403):
        msg = body.get("message", "") if isinstance(body, dict) else ""
        raise (errors.Forbidden if status == 403 else errors.Unauthorized)(
            msg or f"refused with {status}")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Client:
    """A synchronous, thread-safe client; many threads may call it at once.

    It runs an :class:`AsyncClient` on a private event-loop thread. Arguments are
    those of :class:`AsyncClient`. Call :meth:`close` (or use ``with``) when done.
    """

    def __init__(self, addresses: Sequence[str] | str, **kwargs: Any) -> None:
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvraft-client",
                                        daemon=True)
        self._thread.start()
        self._async: AsyncClient = self._run(self._make(addresses, kwargs))
        self._closed = False

    @staticmethod
    async def _make(addresses: Sequence[str] | str, kwargs: dict[str, Any]) -> AsyncClient:
        return AsyncClient(addresses, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self, key: str) -> str | None:
        return self._run(self._async.get(key))

    def put(self, key: str, value: str) -> None:
        self._run(self._async.put(key, value))

    def append(self, key: str, value: str) -> None:
        self._run(self._async.append(key, value))

    def delete(self, key: str) -> bool:
        return self._run(self._async.delete(key))

    def scan(self, start: str = "", end: str | None = None, limit: int = 1000
             ) -> list[tuple[str, str]]:
        return self._run(self._async.scan(start, end, limit))

    def shard_map(self, fresh: bool = False) -> Configuration:
        return self._run(self._async.shard_map(fresh))

    def status(self, address: str | None = None) -> dict[str, Any]:
        return self._run(self._async.status(address))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
