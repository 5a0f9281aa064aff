"""Transport security and who may do what, on real node processes over TLS on 127.0.0.1.

One cluster with TLS and tokens on serves every test here (module scope): plain HTTP and
certificates from another CA are refused, a node certificate cannot speak for another
node, each role can do exactly its operations, a revoked token is refused on every node,
a rotated certificate is taken on SIGHUP without dropping the group, and neither the
secret nor a token shows in a log, a status document or a command line.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvraft import certs, errors
from kvraft.testing import wait_for
from kvraft.testing.cluster import LocalCluster
from kvraft.transport.tls import TLS, TLSFiles


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("secure"), nodes=3, tls=True, auth=True) as c:
        c.wait_for_leader()
        yield c


def _call(c: LocalCluster, i: int, method: str, path: str, *, token: str | None = None,
          body: bytes | None = None, secret: bool = False, tls: TLS | None = None
          ) -> tuple[int, Any]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if secret:
        headers["X-Kvraft-Secret"] = c.secret
    req = urllib.request.Request(f"https://{c.addrs[i]}{path}", data=body, method=method,
                                 headers=headers)
    ctx = (tls or c.tls)
    assert ctx is not None
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx.client) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else raw


def _on_leader(c: LocalCluster, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """The call on group 1's leader (a follower would redirect a write). A leader change
    in between (a loaded machine) is a 307 or a 503 no_leader, neither of which applied
    anything: ask the new leader."""
    answer: tuple[int, Any] = (0, None)

    def answered() -> bool:
        nonlocal answer
        answer = _call(c, c.wait_for_leader(), method, path, **kw)
        code, doc = answer
        return not (code == 307 or (code == 503 and isinstance(doc, dict)
                                    and doc.get("error") == "no_leader"))

    wait_for(answered, 60, f"group 1's leader to answer {method} {path}")
    return answer


def test_plain_http_is_refused(cluster: LocalCluster) -> None:
    req = urllib.request.Request(f"http://{cluster.addrs[1]}/health")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(req, timeout=5)
    # the node is fine afterwards
    assert _call(cluster, 1, "GET", "/health") == (200, {"ok": True})


def test_certificates_from_another_ca_are_refused(cluster: LocalCluster,
                                                  tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other, name="intruder")
    certs.issue_client(other, "mallory")
    certs.issue_node(other, 2, ["127.0.0.1"])
    assert cluster.certs is not None
    # a client certificate from another CA: the node ends the handshake
    bad_client = TLS(TLSFiles(cluster.certs / "ca.crt", other / "client-mallory.crt",
                              other / "client-mallory.key"))
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        _call(cluster, 1, "GET", "/health", tls=bad_client)
    # a node certificate of the right id but another CA cannot join the peer stream
    as_node = TLS(TLSFiles(cluster.certs / "ca.crt", other / "node-2.crt", other / "node-2.key"))
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        _call(cluster, 1, "GET", "/raft/v1/stream", secret=True, tls=as_node)
    # a client that trusts only the other CA does not accept the node's certificate
    ctx = ssl.create_default_context(cafile=str(other / "ca.crt"))
    host, port = cluster.addrs[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(s, server_hostname=host)


def test_a_node_certificate_cannot_speak_for_another_node(cluster: LocalCluster) -> None:
    assert cluster.certs is not None
    node2 = TLS(TLSFiles(cluster.certs / "ca.crt", cluster.certs / "node-2.crt",
                         cluster.certs / "node-2.key"))

    def stream_as(node: int, tls: TLS) -> int:
        req = urllib.request.Request(
            f"https://{cluster.addrs[1]}/raft/v1/stream",
            headers={"X-Kvraft-Secret": cluster.secret, "X-Kvraft-Node": str(node),
                     "Connection": "Upgrade", "Upgrade": "websocket",
                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "a2V5a2V5a2V5a2V5a2V5a2V5"})
        try:
            with urllib.request.urlopen(req, timeout=5, context=tls.client) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert stream_as(3, node2) == 403  # node 2's certificate claiming to be node 3
    assert cluster.tls is not None
    assert stream_as(2, cluster.tls) == 403  # a client certificate with the secret: no peer
    # snapshots need the sender's own certificate as well
    code, doc = _call(cluster, 1, "POST", "/raft/v1/snapshot", secret=True, body=b"x")
    assert code == 403 and "peer" in doc["message"]


def test_each_role_can_do_exactly_its_operations(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    tokens = {role: admin.token_create(f"role-{role}", role) for role in ("read", "write",
                                                                           "admin")}
    for t in tokens.values():
        cluster.wait_token_known(t)
    ops: dict[str, tuple[str, str, bytes | None]] = {
        "get": ("GET", "/v1/kv/roles", None),
        "scan": ("GET", "/v1/scan?start=&limit=5", None),
        "put": ("PUT", "/v1/kv/roles", b"v"),
        "append": ("POST", "/v1/append/roles", b"+"),
        "delete": ("DELETE", "/v1/kv/roles-other", None),
        "status": ("GET", "/v1/status", None),  # (read: the summary; admin: all)
        "members": ("GET", "/v1/admin/members?group=1", None),
        "tokens": ("GET", "/v1/ctrl/tokens", None),
    }
    allowed = {"read": {"get", "scan", "status"},
               "write": {"get", "scan", "status", "put", "append", "delete"},
               "admin": set(ops)}
    for role, token in tokens.items():
        for op, (method, path, body) in ops.items():
            code, doc = _on_leader(cluster, method, path, token=token, body=body)
            if op in allowed[role]:
                assert code in (200, 404), (role, op, code, doc)  # 404: a get of no key
            else:
                assert code == 403, (role, op, code, doc)
                assert doc["error"] == "forbidden" and role in doc["message"]
    # the status document: a summary below admin (no peer addresses, no backup config)
    summary = _on_leader(cluster, "GET", "/v1/status", token=tokens["read"])[1]
    full = _on_leader(cluster, "GET", "/v1/status", token=tokens["admin"])[1]
    assert set(summary) == {"node", "groups"} and "transport" in full and "backup" in full
    assert summary["groups"]["1"]["role"] == full["groups"]["1"]["role"]
    # without a token: 401 everywhere but /health, and nothing is written
    for op, (method, path, body) in ops.items():
        code, doc = _on_leader(cluster, method, path, body=body)
        assert code == 401 and doc["error"] == "unauthorized", (op, code, doc)
    code, doc = _on_leader(cluster, "PUT", "/v1/kv/roles", token="kvt_forged", body=b"no")
    assert code == 401
    with cluster.client(token=tokens["read"]) as c:
        assert c.get("roles") == "v+"  # the write token's put and append, nothing else
        with pytest.raises(errors.Forbidden):
            c.put("roles", "read-only")  # through the client's stream too
        assert c.get("roles") == "v+"
    with cluster.client(token=None) as c, pytest.raises(errors.Unauthorized):
        c.get("roles")


def test_a_revoked_token_is_refused_on_every_node(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    token = admin.token_create("short-lived", "write")
    cluster.wait_token_known(token)
    open_client = cluster.client(token=token)  # its streams stay open across the revoke
    open_client.put("revoke-me", "1")
    assert "short-lived" in [t["name"] for t in admin.tokens()]
    admin.token_revoke("short-lived")
    # every node polls the controller every 0.5 s: the bound leaves room for a loaded CI
    cluster.wait_token_known(token, known=False, timeout_s=10.0)
    try:  # an open stream re-checks its credentials on every message
        with pytest.raises(errors.Unauthorized):
            open_client.put("revoke-me", "on an open stream")
    finally:
        open_client.close()
    for i in cluster.ids:
        code, _ = _call(cluster, i, "GET", "/v1/kv/revoke-me", token=token)
        assert code == 401
    with cluster.client(token=token) as c, pytest.raises(errors.Unauthorized):
        c.put("revoke-me", "2")
    with cluster.client() as c:
        assert c.get("revoke-me") == "1"
    with pytest.raises(errors.KvraftError, match="no token named"):
        admin.token_revoke("short-lived")


def test_certificate_rotation_on_sighup_keeps_the_group(cluster: LocalCluster) -> None:
    assert cluster.certs is not None
    node = 3
    host, port = cluster.addrs[node].rsplit(":", 1)

    def served_fingerprint() -> str:
        assert cluster.tls is not None
        with socket.create_connection((host, int(port)), timeout=5) as s, \
                cluster.tls.client.wrap_socket(s, server_hostname=host) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        return ssl.DER_cert_to_PEM_cert(der)

    before = served_fingerprint()
    lead = cluster.wait_for_leader(1)
    term = cluster.status(lead)["term"]  # type: ignore[index]
    certs.issue_node(cluster.certs, node, ["127.0.0.1", "localhost"], force=True)
    cluster.kill(node, signal.SIGHUP)
    wait_for(lambda: served_fingerprint() != before, 30, "the rotated certificate")
    assert served_fingerprint() == (cluster.certs / f"node-{node}.crt").read_text()
    with cluster.client() as c:
        c.put("after-rotation", "ok")
        assert c.get("after-rotation") == "ok"
    commit = cluster.status(cluster.wait_for_leader(1))["commit"]  # type: ignore[index]
    cluster.wait_applied(cluster.ids, commit)  # node 3 still follows
    assert cluster.status(cluster.wait_for_leader(1))["term"] == term  # no election


def test_no_secret_or_token_in_logs_status_or_command_lines(cluster: LocalCluster) -> None:
    token = cluster.admin().token_create("leak-check", "read")
    cluster.wait_token_known(token)
    _call(cluster, 1, "GET", "/v1/kv/x", token=token)
    _call(cluster, 1, "GET", "/v1/kv/x", token=token + "wrong")
    secrets = [cluster.secret, token]
    assert cluster.token is not None
    secrets.append(cluster.token)
    for i in cluster.ids:
        _, status = _call(cluster, i, "GET", "/v1/status", secret=True)
        text = json.dumps(status) + cluster.log_path(i).read_text(errors="replace")
        cmdline = Path(f"/proc/{cluster.procs[i].pid}/cmdline").read_bytes().decode()
        for s in secrets:
            assert s not in text and s not in cmdline
