"""The layering rules of DESIGN.md, checked on the import graph (AST, no execution)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "kvraft"

PURE = ("raft", "kv", "ctrler")
FORBIDDEN_IN_PURE = {"asyncio", "time", "random", "socket", "sqlite3", "sqlite_utils", "aiohttp",
                     "boto3", "botocore", "os", "threading", "subprocess", "uvloop"}
# Which kvraft layers each layer may import (lower layers only).
ALLOWED = {
    "raft": {"raft"},
    # Data groups consume the controller's configurations; the controller knows nothing
    # of how data groups apply them.
    "kv": {"kv", "ctrler", "raft"},
    "ctrler": {"ctrler", "raft"},
    "storage": {"storage", "kv", "ctrler", "raft", "errors"},
    "transport": {"transport", "kv", "ctrler", "raft", "errors", "config"},
}
# kvraft/config.py (every setting and its default) is a leaf that any layer may import.
LEAVES = ("config.py",)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def test_pure_core_does_no_io() -> None:
    offenders = []
    for layer in PURE:
        for path in _modules(layer):
            for name in _imports(path):
                if name.split(".")[0] in FORBIDDEN_IN_PURE:
                    offenders.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)
    assert _modules("raft") and _modules("kv"), "the pure packages must exist"


def test_layers_point_one_way() -> None:
    offenders = []
    for layer, allowed in ALLOWED.items():
        for path in _modules(layer):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] != "kvraft" or len(parts) < 2:
                    continue
                if parts[1] not in allowed:
                    offenders.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_leaves_import_no_kvraft_module() -> None:
    offenders = [f"{leaf} imports {name}" for leaf in LEAVES for name in _imports(ROOT / leaf)
                 if name.split(".")[0] == "kvraft"]
    assert not offenders, "\n".join(offenders)


def test_checker_detects_a_violation(tmp_path: Path) -> None:
    """The rule check itself can fail: an I/O import in a pure module is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n")
    assert {"asyncio", "time"} <= _imports(bad)
