"""Reusable helpers for kvraft's tests (not used by the server at runtime)."""

from kvraft.testing.moto import FAKE_AWS_ENV, MotoServer, MotoServerError, free_port
from kvraft.testing.wait import wait_for

__all__ = ["FAKE_AWS_ENV", "MotoServer", "MotoServerError", "free_port", "wait_for"]
