"""Three real node processes on 127.0.0.1: operations, crashes, pauses, partitions.

The tests on the ``cluster`` fixture run twice: on plain HTTP (``--insecure``), and with
mutual TLS between the nodes and tokens required, the way ``kvraft up`` runs (the secure
path is the tested path)."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvraft import errors
from kvraft.testing import wait_for
from kvraft.testing.cluster import LocalCluster
from kvraft.transport.tls import context


@pytest.fixture(params=["plain", "tls"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    secure = request.param == "tls"
    with LocalCluster(tmp_path / "cluster", nodes=3, tls=secure, auth=secure) as c:
        c.wait_for_leader()
        yield c


def _http(c: LocalCluster, method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, *, token: bool = True
          ) -> tuple[int, dict[str, object]]:
    """A request with the cluster's TLS and, if ``token``, its client token."""
    headers = dict(headers or {})
    if token and c.token:
        headers["Authorization"] = f"Bearer {c.token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=context(c.tls)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_four_operations(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        assert c.get("missing") is None
        c.put("k", "v1")
        assert c.get("k") == "v1"
        c.append("k", "+2")
        assert c.get("k") == "v1+2"
        c.append("new", "x")  # append creates the key
        assert c.get("new") == "x"
        assert c.delete("k") is True
        assert c.get("k") is None
        assert c.delete("k") is False
        c.put("a/b c%é", "unicode ✓")  # keys are URL-encoded end to end
        assert c.get("a/b c%é") == "unicode ✓"


def test_http_api_errors(cluster: LocalCluster) -> None:
    lead = cluster.wait_for_leader()
    base = cluster.url(lead)
    assert _http(cluster, "PUT", f"{base}/v1/kv/" + "k" * 5000, b"v")[0] == 413
    status, doc = _http(cluster, "PUT", f"{base}/v1/kv/big", b"v" * (1 << 20 + 1))
    assert status == 413 and doc["error"] == "too_large"
    assert _http(cluster, "PUT", f"{base}/v1/kv/bad", b"\xff\xfe")[0] == 400
    assert _http(cluster, "PUT", f"{base}/v1/kv/j", b"{not json",
                 {"Content-Type": "application/json"})[0] == 400
    assert _http(cluster, "PUT", f"{base}/v1/kv/j", b'{"value": 3}',
                 {"Content-Type": "application/json"})[0] == 400
    assert _http(cluster, "PUT", f"{base}/v1/kv/s", b"v", {"X-Kvraft-Client": "c",
                                                   "X-Kvraft-Seq": "abc"})[0] == 400
    assert _http(cluster, "GET", f"{base}/v1/kv/nothing")[0] == 404
    status, doc = _http(cluster, "PUT", f"{base}/v1/kv/j", b'{"value": "json"}',
                        {"Content-Type": "application/json"})
    assert status == 200
    assert _http(cluster, "GET", f"{base}/v1/kv/j") == (200, {"key": "j", "value": "json"})
    # Peer and admin endpoints refuse requests without credentials.
    assert _http(cluster, "GET", f"{base}/raft/v1/stream", token=False)[0] == 401
    assert _http(cluster, "GET", f"{base}/v1/admin/faults", token=False)[0] == 401
    # The node is still healthy after all that.
    with cluster.client() as c:
        c.put("after", "ok")
        assert c.get("after") == "ok"


def test_follower_redirects_to_leader(cluster: LocalCluster) -> None:
    opener = urllib.request.build_opener(_NoRedirect(),
                                         urllib.request.HTTPSHandler(context=context(cluster.tls)))
    auth = {"Authorization": f"Bearer {cluster.token}"} if cluster.token else {}
    for _ in range(20):  # a leader change in between (a loaded machine) means: ask again
        lead = cluster.wait_converged()  # the follower must have heard from the leader
        follower = next(i for i in cluster.ids if i != lead)
        req = urllib.request.Request(cluster.url(follower, "/v1/kv/x"), method="GET",
                                     headers=auth)
        with pytest.raises(urllib.error.HTTPError) as ei:
            opener.open(req, timeout=5)
        if cluster.leader() == lead:
            break
    assert ei.value.code == 307
    assert ei.value.headers["Location"] == cluster.url(lead, "/v1/kv/x")


_wait_for = wait_for


def _status(cluster: LocalCluster, i: int) -> dict[str, Any]:
    """Node i's status, waiting while a loaded machine makes it miss a reply."""
    st: dict[str, Any] | None = None

    def answered() -> bool:
        nonlocal st
        st = cluster.status(i)
        return st is not None

    _wait_for(answered, 30, f"node {i}'s status")
    assert st is not None
    return st


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _appenders(cluster: LocalCluster, stop: threading.Event, n_threads: int = 4
               ) -> tuple[list[threading.Thread], dict[str, list[str]], dict[str, list[str]]]:
    """Threads appending unique tokens; returns (threads, acknowledged, unknown) per key."""
    acked: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    lock = threading.Lock()
    client = cluster.client(timeout_s=10.0)

    def run(t: int) -> None:
        key = f"log{t}"
        n = 0
        while not stop.is_set():
            token = f"<{t}.{n}>"
            n += 1
            try:
                client.append(key, token)
            except errors.OutcomeUnknown:
                with lock:
                    unknown.setdefault(key, []).append(token)
                continue
            except errors.Unavailable:
                continue
            with lock:
                acked.setdefault(key, []).append(token)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(n_threads)]
    for th in threads:
        th.start()
    return threads, acked, unknown


def _check_appends(cluster: LocalCluster, acked: dict[str, list[str]],
                   unknown: dict[str, list[str]]) -> int:
    total = 0
    with cluster.client(timeout_s=10.0) as c:
        for key, tokens in acked.items():
            value = c.get(key) or ""
            for tok in tokens:
                assert value.count(tok) == 1, f"acknowledged {tok} appears {value.count(tok)}x"
                total += 1
            for tok in unknown.get(key, []):
                assert value.count(tok) <= 1, f"{tok} applied twice"
    return total


def test_sigkill_leader_under_writes_then_restart(cluster: LocalCluster) -> None:
    stop = threading.Event()
    threads, acked, unknown = _appenders(cluster, stop)
    _wait_for(lambda: sum(len(v) for v in acked.values()) > 0, 30, "writes before the kill")
    old = cluster.wait_for_leader()
    old_term = _status(cluster, old)["term"]
    cluster.kill(old, signal.SIGKILL)
    new = cluster.wait_for_leader(exclude={old})
    new_term = _status(cluster, new)["term"]
    assert new_term > old_term, "the new leader was elected in the killed leader's term"
    before = sum(len(v) for v in acked.values())
    _wait_for(lambda: sum(len(v) for v in acked.values()) > before, 30,
              "writes acknowledged after failover")
    cluster.start_node(old)  # the old leader comes back and catches up
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(timeout=15)
    total = _check_appends(cluster, acked, unknown)
    assert total > 20
    lead = cluster.wait_for_leader()
    commit = cluster.status(lead)["commit"]  # type: ignore[index]
    cluster.wait_applied(cluster.ids, commit)
    st = _status(cluster, old)  # the restarted node learned of the post-failover term
    assert st["term"] >= new_term, st


def test_restart_whole_cluster_keeps_data(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        for i in range(50):
            c.put(f"k{i}", f"v{i}")
        c.append("k0", "-more")
    for i in cluster.ids:
        cluster.kill(i, signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader()
    with cluster.client() as c:
        assert c.get("k0") == "v0-more"
        assert [c.get(f"k{i}") for i in range(1, 50)] == [f"v{i}" for i in range(1, 50)]


def test_sigstop_leader_steps_down_after_sigcont(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("before", "1")
        old = cluster.wait_for_leader()
        old_term = cluster.status(old)["term"]  # type: ignore[index]
        cluster.pause(old)
        cluster.wait_for_leader(exclude={old})
        c.put("during", "2")
        cluster.resume(old)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = cluster.status(old)
            if (st and st["role"] == "follower" and st["term"] > old_term
                    and st["leader"] == cluster.leader()):
                break  # stepped down, and follows the new leader
            time.sleep(0.05)
        else:
            pytest.fail("old leader did not step down and follow the new one after SIGCONT")
        # A client that only knows the old leader is redirected and sees every write.
        with cluster.client(addresses=[cluster.addrs[old]]) as c2:
            assert c2.get("during") == "2"
            c2.put("after", "3")
        assert c.get("after") == "3"
        assert c.get("before") == "1"  # written by the old leader before it was paused


def test_isolated_follower_rejoins_without_disrupting(tmp_path: Path) -> None:
    # Longer timeouts than the other tests: the assertion is that the term does not
    # change, so a spurious election on a starved CI machine must be out of the picture.
    cluster = LocalCluster(tmp_path / "c", nodes=3, tick_ms=50, election_ticks=20)
    cluster.start()
    try:
        _isolated_follower_rejoins(cluster)
    finally:
        cluster.stop()


def _isolated_follower_rejoins(cluster: LocalCluster) -> None:
    lead = cluster.wait_converged()
    term = cluster.status(lead)["term"]  # type: ignore[index]
    follower = next(i for i in cluster.ids if i != lead)
    cluster.isolate(follower)
    with cluster.client() as c:
        for i in range(20):
            c.put(f"iso{i}", str(i))
    time.sleep(cluster.tick_ms * 20 * 4 / 1000)  # several election timeouts
    cluster.heal()
    st = cluster.status(lead)
    commit = st["commit"]  # type: ignore[index]
    cluster.wait_applied([follower], commit)
    st = cluster.status(lead)
    assert st is not None and st["role"] == "leader" and st["term"] == term, \
        "the rejoining follower disrupted the leader"


def test_sigterm_on_leader_hands_off_leadership(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("k", "before")
        old = cluster.wait_for_leader()
        cluster.kill(old, signal.SIGTERM)  # a clean shutdown
        cluster.wait_for_leader(exclude={old})
        assert "leadership handed off" in cluster.log_path(old).read_text()
        assert c.get("k") == "before"  # the write acknowledged by the old leader survived
        c.put("k", "after")
        assert c.get("k") == "after"


def test_prometheus_metrics(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("m", "1")
        assert c.get("m") == "1"
    lead = cluster.wait_for_leader()
    req = urllib.request.Request(cluster.url(lead, "/metrics"), headers={"Authorization": f"Bearer {cluster.token}"} if cluster.token else {})
    with urllib.request.urlopen(req, timeout=5, context=context(cluster.tls)) as r:
        text = r.read().decode()
    assert 'kvraft_raft_is_leader{group="1"} 1.0' in text
    assert 'kvraft_http_requests_total{code="200",op="put"}' in text
    assert "kvraft_http_request_seconds_bucket" in text
    assert "kvraft_transport_frames_sent_total" in text


def test_async_client_and_many_threads_on_one_client(cluster: LocalCluster) -> None:
    import asyncio


    async def run() -> None:
        async with cluster.async_client() as ac:
            await asyncio.gather(*(ac.append("shared", f"<{i}>") for i in range(100)))
            value = await ac.get("shared")
            assert value is not None
            assert all(value.count(f"<{i}>") == 1 for i in range(100))

    asyncio.run(run())
    with cluster.client() as c:
        errs: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for j in range(20):
                    c.append("threads", f"[{t}.{j}]")
            except BaseException as e:  # surfaced below
                errs.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errs
        value = c.get("threads") or ""
        assert all(value.count(f"[{t}.{j}]") == 1 for t in range(16) for j in range(20))
        with pytest.raises(errors.InvalidArgument):
            c.put("", "x")
        with pytest.raises(errors.InvalidArgument):
            c.put("k", 3)  # type: ignore[arg-type]
