"""The ``kvraft check HISTORY.jsonl`` command and the text rendering of results.

Exit codes: 0 the history is linearizable, 1 a violation was found, 2 the
verdict is unknown (a budget ran out) or the input could not be read (a
malformed file is reported with its line number, without a traceback).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import click

from kvraft.check.history import HistoryFormatError, Operation, load_history
from kvraft.check.linearizability import CheckResult, Fragment, KeyResult, check_history

__all__ = [
    "EXIT_CODES",
    "check_command",
    "format_fragment",
    "format_key_line",
    "format_op",
    "format_result",
]

EXIT_CODES: dict[str, int] = {"ok": 0, "violation": 1, "unknown": 2, "error": 2}
_PREFIX_TAIL = 8  # prefix operations shown before the dead end
_MAX_SHOWN = 40  # cap on operations listed per section
_MAX_STR = 48  # longer values are abbreviated


def _fmt_str(value: str | None) -> str:
    if value is None:
        return "absent"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > _MAX_STR:
        keep = (_MAX_STR - 8) // 2
        text = f"{text[:keep]}…{text[-keep:]} ({len(value)} chars)"
    return text


def _fmt_ns(delta: float) -> str:
    if delta == float("inf"):
        return "∞"
    if abs(delta) >= 1_000_000:
        return f"+{delta / 1_000_000:.3f}ms"
    if abs(delta) >= 1_000:
        return f"+{delta / 1_000:.3f}us"
    return f"+{int(delta)}ns" if delta else "+0"


def _fmt_call(op: Operation) -> str:
    if op.op == "get":
        return "get()" if op.outcome != "ok" else f"get() -> {_fmt_str(op.result)}"
    if op.op == "delete":
        return "delete()"
    return f"{op.op}({_fmt_str(op.value)})"


def format_op(op: Operation, t0: int) -> str:
    """One line: id, client, call and result, outcome, interval relative to ``t0``."""
    end = "?" if op.complete_ns is None else _fmt_ns(op.complete_ns - t0)
    closing = ")" if op.outcome == "unknown" else "]"
    interval = f"[{_fmt_ns(op.invoke_ns - t0)}, {end}{closing}"
    return f"#{op.id:<6} {op.client:<10} {_fmt_call(op):<40} {op.outcome:<7} {interval}"


def _section(title: str, ops: Iterable[Operation], t0: int, mark: Operation | None = None
             ) -> list[str]:
    listed = list(ops)
    lines = [f"  {title}"]
    for op in listed[:_MAX_SHOWN]:
        arrow = "  <- blocking" if mark is not None and op.id == mark.id else ""
        lines.append(f"    {format_op(op, t0)}{arrow}")
    if len(listed) > _MAX_SHOWN:
        lines.append(f"    … {len(listed) - _MAX_SHOWN} more")
    return lines


def format_fragment(frag: Fragment) -> str:
    """Multi-line, indented description of a violation.

    Times are relative to the earliest invocation among the operations shown;
    ``[a, b]`` is an acknowledged or failed op, ``[a, b)`` an unknown one.
    """
    tail = frag.prefix[-_PREFIX_TAIL:]
    shown = [*tail, *frag.stuck, *frag.concurrent, *frag.witness]
    t0 = min(o.invoke_ns for o in shown)
    lines = [f"  times relative to t0 = {t0} ns"]
    skipped = len(frag.prefix) - len(tail)
    more = f" (last {len(tail)} shown)" if skipped else ""
    lines += _section(f"longest linearizable prefix: {len(frag.prefix)} ops{more}", tail, t0)
    lines.append(f"  state after the prefix: {_fmt_str(frag.state)}")
    lines += _section(
        "none of these pending operations can be linearized next:", frag.stuck, t0, frag.blocking
    )
    if frag.concurrent:
        lines += _section("prefix operations concurrent with them:", frag.concurrent, t0)
    lines += _section(
        f"witness: {len(frag.witness)} ops that are not linearizable on their own:",
        frag.witness,
        t0,
    )
    return "\n".join(lines)


def format_key_line(res: KeyResult) -> str:
    """``key <key>: <ops> ops, <verdict>, <steps> steps`` plus details."""
    dropped = f" ({res.dropped} dropped)" if res.dropped else ""
    reason = f" ({res.reason})" if res.reason else ""
    verdict = res.verdict.upper() if res.verdict != "ok" else "ok"
    return f"key {json.dumps(res.key)}: {res.ops} ops{dropped}, {verdict}{reason}, {res.steps} steps"


def format_result(result: CheckResult) -> str:
    """The full text report: one line per key, fragments, then a summary line."""
    lines: list[str] = []
    for res in result.keys:
        lines.append(format_key_line(res))
        if res.fragment is not None:
            lines.append(format_fragment(res.fragment))
    counts = {v: sum(1 for k in result.keys if k.verdict == v) for v in ("ok", "violation", "unknown")}
    lines.append(
        f"{result.verdict.upper()}: {len(result.keys)} keys ({counts['ok']} ok, "
        f"{counts['violation']} violation, {counts['unknown']} unknown), {result.ops} ops, "
        f"{result.steps} steps, {result.elapsed_s:.2f}s"
    )
    return "\n".join(lines)


def _fail_input(message: str, line: int | None, as_json: bool) -> None:
    click.echo(f"error: {message}", err=True)
    if as_json:
        click.echo(json.dumps({"verdict": "error", "error": message, "line": line}))
    raise click.exceptions.Exit(EXIT_CODES["error"])


@click.command("check")
@click.argument("history", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--time-budget-s",
    type=click.FloatRange(min=0.0),
    default=60.0,
    show_default=True,
    help="Wall-clock budget for the whole check, in seconds.",
)
@click.option(
    "--step-budget",
    type=click.IntRange(min=1),
    default=5_000_000,
    show_default=True,
    help="Search steps allowed per key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report.")
def check_command(history: Path, time_budget_s: float, step_budget: int, as_json: bool) -> None:
    """Check that the client history HISTORY (JSON lines) is linearizable.

    Exit status: 0 linearizable, 1 violation found, 2 unknown (budget
    exhausted) or unreadable input.
    """
    try:
        ops = load_history(history)
    except HistoryFormatError as exc:
        _fail_input(f"{history}: {exc}", exc.line, as_json)
        return
    except OSError as exc:
        _fail_input(f"{history}: cannot read: {exc.strerror or exc}", None, as_json)
        return
    result = check_history(ops, time_budget_s=time_budget_s, step_budget=step_budget)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        click.echo(format_result(result))
    raise click.exceptions.Exit(EXIT_CODES[result.verdict])
