"""Reusable helpers for kvraft's tests (not used by the server at runtime)."""

from kvraft.testing.moto import FAKE_AWS_ENV, MotoServer, MotoServerError, free_port

__all__ = ["FAKE_AWS_ENV", "MotoServer", "MotoServerError", "free_port"]
