"""kvraft: a strongly consistent, fault-tolerant key-value store with its own Raft.

Public API::

    from kvraft import Client, AsyncClient, errors
    with Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as c:
        c.put("greeting", "hello")
        c.get("greeting")  # -> "hello"
"""

from kvraft import errors
from kvraft.admin import ShardAdmin
from kvraft.client import AsyncClient, Client
from kvraft.recorder import HistoryRecorder

__all__ = ["AsyncClient", "Client", "HistoryRecorder", "ShardAdmin", "errors"]
