"""The pure key-value state machine: commands, sessions, and the Backend port."""

from kvraft.kv.commands import Command, CommandDecodeError, Op
from kvraft.kv.machine import Backend, KVStateMachine, MemoryBackend, Result, Session, Status

__all__ = [
    "Backend",
    "Command",
    "CommandDecodeError",
    "KVStateMachine",
    "MemoryBackend",
    "Op",
    "Result",
    "Session",
    "Status",
]
