"""Helpers for the event-loop tasks that run until they are cancelled."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop.

    A loop that runs until cancelled and goes on after an ``Exception`` could miss its
    cancellation: on Python 3.11, ``asyncio.wait_for`` returns (or raises) the awaited
    operation's own outcome when it completes in the same turn as the cancellation, and
    library code may turn a ``CancelledError`` into an error of its own. The request
    stays counted on the task (``Task.cancelling()``), so the loop checks it once a turn;
    otherwise whoever awaits the task (a node stopping) waits forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
