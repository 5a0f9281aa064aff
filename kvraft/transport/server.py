"""The listening socket of a node, with limits on what a connection may hold.

aiohttp serves the routes; this site wraps each connection's protocol so that:

- at most ``max_connections`` are open at once (more are closed at once, and counted);
- a connection must complete the TLS handshake and send its first request's headers
  within ``header_timeout_s`` (a slowloris client that trickles bytes is dropped, and
  counted); later requests on a kept-alive connection are bounded by aiohttp's idle
  timeout (``idle_timeout_s``), and request lines, header fields and header counts by
  its parser limits (``max_header_bytes``, ``max_headers``).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

_END = b"\r\n\r\n"


@dataclass(slots=True)
class ConnectionStats:
    open: int = 0
    refused: int = 0
    """Connections closed at once: ``max_connections`` were open."""
    slow: int = 0
    """Connections dropped for not sending their headers in time."""


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol, watching the first request's head."""

    __slots__ = ("inner", "site", "transport", "timer", "tail", "counted")

    def __init__(self, inner: Any, site: GuardedSite) -> None:
        self.inner = inner
        self.site = site
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        st = self.site.stats
        if st.open >= self.site.max_connections:
            st.refused += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        st.open += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(self.site.header_timeout_s,
                                                           self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        self.site.stats.slow += 1
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            if _END in data or _END in self.tail + data[:3]:
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.counted else None  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.counted:
            return
        self.counted = False
        self.site.stats.open -= 1
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A :class:`aiohttp.web.TCPSite` whose connections are limited (see the module)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None, max_connections: int,
                 header_timeout_s: float) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.stats = ConnectionStats()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guarded(server(), self), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog, reuse_address=True,
            ssl_handshake_timeout=self.header_timeout_s if self._ssl_context else None)
