"""Give a new cluster its first configuration: join the data groups, split the key space.

Used by ``kvraft up`` and the test cluster. Idempotent: a controller that already has
a configuration beyond 0 is left alone. Blocking (urllib): called from CLIs and tests.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from kvraft.transport.auth import SECRET_HEADER
from kvraft.transport.tls import TLS, context, url


class BootstrapError(RuntimeError):
    """The controller did not accept the first configuration in time."""


def _call(addrs: Sequence[str], secret: str, method: str, path: str,
          body: dict[str, Any] | None, deadline: float, tls: TLS | None) -> dict[str, Any]:
    last = "no answer"
    while time.monotonic() < deadline:
        for addr in addrs:
            req = urllib.request.Request(
                url(tls, addr, path), method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={SECRET_HEADER: secret, "Content-Type": "application/json"})
            try:
                # a follower answers 307 (urllib does not follow it for a POST): the
                # loop goes on to the next address until the leader accepts
                with urllib.request.urlopen(req, timeout=10.0, context=context(tls)) as r:
                    doc: dict[str, Any] = json.loads(r.read() or b"{}")
                    return doc
            except urllib.error.HTTPError as e:
                raw = e.read()
                last = f"{addr}: {e.code} {raw[:200]!r}"
                if e.code in (400, 401, 413):
                    raise BootstrapError(last) from None
            except (OSError, ValueError) as e:
                last = f"{addr}: {e}"
        time.sleep(0.1)
    raise BootstrapError(f"controller did not answer {path}: {last}")


def latest_config(ctrl: Sequence[str], secret: str, timeout_s: float = 30.0,
                  tls: TLS | None = None) -> dict[str, Any]:
    doc = _call(ctrl, secret, "GET", "/v1/ctrl/config?num=-1", None,
                time.monotonic() + timeout_s, tls)
    cfg: dict[str, Any] = doc["config"]
    return cfg


def split_points(n: int) -> list[str]:
    """``n - 1`` keys splitting printable ASCII keys roughly evenly (``n`` ranges)."""
    if n <= 1:
        return []
    lo, hi = 0x30, 0x7A  # '0' .. 'z'
    return [chr(lo + (hi - lo) * i // n) for i in range(1, n)]


def bootstrap(ctrl: Sequence[str], secret: str, groups: Mapping[int, Mapping[int, str]],
              splits: Sequence[str] | None = None, timeout_s: float = 60.0,
              tls: TLS | None = None) -> int:
    """Join ``groups`` and split the key space at ``splits`` (default: one range per
    group), then balance; returns the configuration number reached."""
    deadline = time.monotonic() + timeout_s
    cfg = latest_config(ctrl, secret, timeout_s, tls)
    if cfg["num"] > 0:
        return int(cfg["num"])
    points = list(splits) if splits is not None else split_points(len(groups))
    for key in points:
        # A retried split (an answer lost to a timeout) is refused: check the map instead.
        try:
            _call(ctrl, secret, "POST", "/v1/ctrl/command", {"op": "split", "key": key},
                  deadline, tls)
        except BootstrapError:
            starts = [r[1] for r in latest_config(ctrl, secret, timeout_s, tls)["ranges"]]
            if key not in starts:
                raise
    for gid, members in sorted(groups.items()):
        _call(ctrl, secret, "POST", "/v1/ctrl/command",
              {"op": "join", "gid": gid, "members": {str(k): v for k, v in members.items()}},
              deadline, tls)
    try:
        doc = _call(ctrl, secret, "POST", "/v1/ctrl/plan", {"apply": True}, deadline, tls)
    except BootstrapError:  # "plan is stale": a retried plan that was applied already
        return int(latest_config(ctrl, secret, timeout_s, tls)["num"])
    return int(doc["num"])


def wait_groups_at(status_addrs: Sequence[str], groups: Sequence[int], num: int,
                   timeout_s: float = 60.0, *, secret: str = "", tls: TLS | None = None
                   ) -> None:
    """Wait until every data group's leader (as some node reports) has taken ``num``."""
    deadline = time.monotonic() + timeout_s
    pending = set(groups)
    while time.monotonic() < deadline and pending:
        for addr in status_addrs:
            try:
                req = urllib.request.Request(url(tls, addr, "/v1/status"),
                                             headers={SECRET_HEADER: secret})
                with urllib.request.urlopen(req, timeout=2.0, context=context(tls)) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError):
                continue
            for gid, g in doc.get("groups", {}).items():
                sh = g.get("shards")
                if (int(gid) in pending and g.get("role") == "leader" and sh
                        and sh["num"] >= num and not sh["pulling"]):
                    pending.discard(int(gid))
        if pending:
            time.sleep(0.05)
    if pending:
        raise BootstrapError(f"groups {sorted(pending)} did not reach configuration {num}")
