"""kvraft: a strongly consistent key-value store with its own Raft."""
