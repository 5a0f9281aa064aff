"""shardctl: the operator's command line for a sharded kvraft cluster (see ``shardctl --help``)."""

from shardctl.cli import main

__all__ = ["main"]
