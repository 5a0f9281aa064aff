"""Golden interaction tests of the Raft core: runs every ``tests/golden/*.txt`` scenario.

Each file interleaves commands with the transcript they must produce (see
``tests/golden/interpreter.py`` for the format and the commands). To regenerate the
expected output after an intended change, run::

    KVRAFT_REWRITE_GOLDEN=1 /tmp/venv/bin/pytest tests/test_golden.py

and review the diff: an expectation states correct Raft behaviour, not the core's.
Rewriting refuses transcripts that show a safety or invariant violation.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from golden.interpreter import Block, ScriptError, parse, render, run_file, run_text

GOLDEN_DIR = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN_DIR.glob("*.txt"))
REWRITE = os.environ.get("KVRAFT_REWRITE_GOLDEN") == "1"
NEVER_EXPECTED = ("SAFETY VIOLATION", "error: InvariantViolation")


def test_there_are_golden_files() -> None:
    assert len(FILES) >= 9


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden(path: Path) -> None:
    items = run_file(path)
    produced = render(items)
    if REWRITE:
        unsafe = [it for it in items if isinstance(it, Block) and any(
            marker in it.actual for marker in NEVER_EXPECTED)]
        if unsafe:
            pytest.fail(f"{path.name}: refusing to record a transcript with a safety or "
                        f"invariant violation (line {unsafe[0].line_no}: {unsafe[0].command})",
                        pytrace=False)
        if produced != path.read_text():
            path.write_text(produced)
        return
    failures = []
    for it in items:
        if isinstance(it, Block) and it.actual != it.expected:
            diff = "\n".join(difflib.unified_diff(
                it.expected.split("\n"), it.actual.split("\n"),
                "expected", "actual", lineterm="", n=2))
            failures.append(f"{path.name}:{it.line_no}: {it.command}\n{diff}")
    if failures:
        pytest.fail(f"{len(failures)} command(s) differ from the golden file "
                    f"(KVRAFT_REWRITE_GOLDEN=1 regenerates; review the diff):\n\n"
                    + "\n\n".join(failures), pytrace=False)


def test_parse_render_round_trip() -> None:
    text = ("# a comment\n\nadd-nodes 1\n----\nok\n\n"
            "campaign 1  # with a trailing comment\n----\nok\n")
    items = parse(text)
    for it in items:
        if isinstance(it, Block):
            it.actual = it.expected
    assert render(items) == text
    assert [it.command for it in items if isinstance(it, Block)] == [
        "add-nodes 1", "campaign 1  # with a trailing comment"]


def test_transcript_is_deterministic() -> None:
    text = ("add-nodes 3\n----\nok\n\ncampaign 2\n----\nok\n\nstabilize\n----\nok\n\n"
            "propose 2 x\n----\nok\n\nstabilize\n----\nok\n\nraft-state\n----\nok\n")
    first = render(run_text(text))
    assert render(run_text(text)) == first
    assert "2: Leader term=1 lead=2" in first


def test_script_errors_name_the_line() -> None:
    with pytest.raises(ScriptError, match="line 1: unknown add-nodes options"):
        run_text("add-nodes 3 checkqourum=false\n----\nok\n")
    with pytest.raises(ScriptError, match="line 5: unknown command"):
        run_text("add-nodes 1\n----\nok\n\nfrobnicate 1\n----\nok\n")
