"""Collecting and rendering ``kvraft status`` (one row per node and group)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from kvraft.credentials import Credentials
from kvraft.transport.tls import TLS, client_ssl, url


async def _one(session: aiohttp.ClientSession, addr: str, tls: TLS | None) -> Any:
    try:
        async with session.get(url(tls, addr, "/v1/status")) as r:
            doc = await r.json()
            if r.status != 200:
                return {"error": f"{r.status} {doc.get('message', '')}".strip()}
            return doc
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}".strip()}


async def collect_status(addrs: list[str], timeout_s: float = 5.0,
                         creds: Credentials | None = None) -> dict[str, Any]:
    """Fetch ``/v1/status`` from every address; unreachable nodes map to an error."""
    creds = creds or Credentials()
    addrs = [a.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
             for a in addrs]
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers=creds.headers(),
                                     connector=aiohttp.TCPConnector(
                                         ssl=client_ssl(creds.tls))) as s:
        for _ in range(3):  # members the groups list (nodes added since) are asked too
            todo = [a for a in dict.fromkeys(addrs) if a not in out]
            if not todo:
                break
            docs = await asyncio.gather(*(_one(s, a, creds.tls) for a in todo))
            out.update(zip(todo, docs, strict=True))
            addrs = [a for d in docs for g in (d.get("groups") or {}).values()
                     for a in (g.get("addresses") or {}).values() if isinstance(a, str)]
    return out


def _membership(g: dict[str, Any]) -> str:
    """``; voters [1, 2, 3]; learners 4 (120 behind)`` from a leader's group status."""
    out = f"; voters {g.get('voters', [])}"
    learners = g.get("learners") or []
    if learners:
        progress = g.get("progress", {})
        commit = g.get("commit", 0)
        parts = []
        for n in learners:
            p = progress.get(str(n))
            parts.append(f"{n} ({max(0, commit - p['match'])} behind, {p['state']})" if p
                         else str(n))
        out += "; learners " + ", ".join(parts)
    return out


def render_status(docs: dict[str, Any]) -> str:
    header = ("ADDRESS", "NODE", "GROUP", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST")
    rows: list[tuple[str, ...]] = []
    leaders: dict[str, set[str]] = {}
    membership: dict[str, str] = {}
    for addr, doc in docs.items():
        if "groups" not in doc:
            rows.append((addr, "-", "-", "unreachable", "-", "-", "-", "-", doc.get("error", "")))
            continue
        for gid, g in sorted(doc["groups"].items()):
            leader = g.get("leader")
            rows.append((addr, str(doc.get("node")), gid, g.get("role", "?"), str(g.get("term")),
                         str(leader or "-"), str(g.get("commit")), str(g.get("applied")),
                         str(g.get("last_index"))))
            if g.get("role") == "leader":
                leaders.setdefault(gid, set()).add(f"node {doc.get('node')} ({addr})")
                membership[gid] = _membership(g)
            elif g.get("member") is False and g.get("voters"):
                rows[-1] = (*rows[-1][:3], "removed", *rows[-1][4:])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    groups = sorted({r[2] for r in rows if r[2] != "-"})
    for gid in groups:
        who = leaders.get(gid)
        lines.append(f"group {gid}: " + (f"leader is {', '.join(sorted(who))}" if who
                                         else "NO LEADER") + membership.get(gid, ""))
    return "\n".join(lines)
