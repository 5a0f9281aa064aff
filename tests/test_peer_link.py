"""A peer link stops when its node stops, even if the cancellation is swallowed on the
way (Python 3.11's ``wait_for`` racing its operation's completion, or a library turning
``CancelledError`` into an error of its own): ``PeerTransport.close`` never hangs."""

from __future__ import annotations

import asyncio

import pytest

from kvraft.testing.moto import free_port
from kvraft.transport import peer
from kvraft.transport.aio import raise_if_cancelled
from kvraft.transport.peer import PeerTransport


async def test_a_link_whose_cancellation_turns_into_an_error_still_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    entered = asyncio.Event()
    swallowed = 0

    async def connected_loop(self: peer._PeerLink) -> None:
        nonlocal swallowed
        entered.set()
        try:
            await asyncio.Event().wait()  # (connected, waiting for messages)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > 1:  # (only once: a failing run still ends)
                raise
            raise ConnectionResetError("the stream broke while stopping") from None

    monkeypatch.setattr(peer._PeerLink, "_connected_loop", connected_loop)
    t = PeerTransport(node_id=1, secret="s", deliver=lambda g, m: None)
    await t.start()
    t.set_peer(2, f"127.0.0.1:{free_port()}")
    await entered.wait()
    closing = asyncio.ensure_future(t.close())
    done, _ = await asyncio.wait({closing}, timeout=30)  # (a hang fails here, at once)
    link = t.links[2]
    assert link.task is not None
    if not done:
        link.task.cancel()
        await closing
        raise AssertionError("close() waits forever on a link that swallowed its cancel")
    assert swallowed == 1
    assert link.task.cancelled()


async def test_raise_if_cancelled_only_after_a_cancel_request() -> None:
    raise_if_cancelled()  # (not cancelled: nothing happens)
    turns = 0
    waiting = asyncio.Event()

    async def loop_forever() -> None:
        nonlocal turns
        while True:
            try:
                waiting.set()
                await asyncio.Event().wait()  # (until cancelled)
            except asyncio.CancelledError:
                pass  # swallowed, as a racing wait_for may
            turns += 1
            raise_if_cancelled()

    task = asyncio.get_running_loop().create_task(loop_forever())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(30):
            await task
    assert turns == 1
