"""Golden interaction tests of the Raft core (see ``interpreter.py``)."""
