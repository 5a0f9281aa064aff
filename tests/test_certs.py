"""kvraft.certs: the CA and the node/client certificates, on real files and real TLS handshakes."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft.certs import (
    CA_CERT,
    CA_KEY,
    certs_cli,
    describe,
    init_ca,
    issue_client,
    issue_node,
    node_id_of,
)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two independent CAs; node-1, node-2 and client-alice from the first, intruders from the
    second."""
    good, evil = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("evil")
    init_ca(good, name="kvraft-test")
    init_ca(evil, name="evil")
    issue_node(good, 1, ["127.0.0.1", "localhost"])
    issue_node(good, 2, ["127.0.0.1"])
    issue_client(good, "alice")
    issue_node(evil, 1, ["127.0.0.1"])
    issue_node(evil, 2, ["127.0.0.1"])
    return {"good": good, "evil": evil}


# --- files and certificate contents -------------------------------------------------------


def test_files_modes_and_no_leftovers(pki: dict[str, Path]) -> None:
    good = pki["good"]
    names = {p.name for p in good.iterdir()}
    assert names == {CA_CERT, CA_KEY, "node-1.crt", "node-1.key", "node-2.crt", "node-2.key",
                     "client-alice.crt", "client-alice.key"}  # no temp files left behind
    for name in names:
        mode = (good / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644), name


def test_reinit_without_force_refuses_and_keeps_the_key(tmp_path: Path) -> None:
    crt, key = init_ca(tmp_path)
    before = key.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        init_ca(tmp_path)
    assert key.read_bytes() == before
    init_ca(tmp_path, force=True)
    assert key.read_bytes() != before and key.stat().st_mode & 0o777 == 0o600
    issue_node(tmp_path, 1, ["127.0.0.1"])
    with pytest.raises(FileExistsError):
        issue_node(tmp_path, 1, ["127.0.0.1"])
    issue_node(tmp_path, 1, ["127.0.0.1"], force=True)


def test_ca_and_leaf_extensions(pki: dict[str, Path]) -> None:
    good = pki["good"]
    ca = _load(good / CA_CERT)
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "kvraft-test"
    ku = _ext(ca, x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ski = _ext(ca, x509.SubjectKeyIdentifier).value

    node_pem = (good / "node-1.crt").read_text()
    assert node_pem.count("BEGIN CERTIFICATE") == 1  # the leaf only
    node = _load(good / "node-1.crt")
    node.verify_directly_issued_by(ca)
    assert node.subject.rfc4514_string() == "CN=node-1,O=kvraft-test"
    assert not _ext(node, x509.BasicConstraints).value.ca
    assert list(_ext(node, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(node, x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert _ext(node, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert node.not_valid_after_utc <= ca.not_valid_after_utc

    client = _load(good / "client-alice.crt")
    client.verify_directly_issued_by(ca)
    assert client.subject.rfc4514_string() == "CN=client-alice,O=kvraft-test"
    assert list(_ext(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_separate_ca_dir_and_ipv6(pki: dict[str, Path], tmp_path: Path) -> None:
    crt, key = issue_node(tmp_path / "n3", 3, ["::1", "kv3.example"], ca_dir=pki["good"])
    assert crt == tmp_path / "n3" / "node-3.crt" and key.name == "node-3.key"
    assert not (tmp_path / "n3" / CA_KEY).exists()
    assert describe(crt)["sans"] == ["::1", "kv3.example"]


def test_describe(pki: dict[str, Path]) -> None:
    path = pki["good"] / "node-1.crt"
    info = describe(path)
    assert info["subject_cn"] == "node-1" and info["issuer_cn"] == "kvraft-test CA"
    assert info["sans"] == ["127.0.0.1", "localhost"]
    after = dt.datetime.fromisoformat(info["not_after"])
    assert dt.timedelta(days=824) < after - dt.datetime.now(dt.UTC) <= dt.timedelta(days=825)
    der = ssl.PEM_cert_to_DER_cert(path.read_text())
    assert info["fingerprint_sha256"] == hashlib.sha256(der).digest().hex(":").upper()
    with pytest.raises(ValueError, match="node-1.key"):
        describe(pki["good"] / "node-1.key")


@pytest.mark.parametrize("node_id", [0, -1, True, "1", 1.0])
def test_bad_node_ids(tmp_path: Path, node_id: Any) -> None:
    init_ca(tmp_path)
    with pytest.raises(ValueError, match="positive"):
        issue_node(tmp_path, node_id, ["127.0.0.1"])


@pytest.mark.parametrize("hosts", [[], (), "127.0.0.1", [""], ["a b"], ["ünï.example"]])
def test_bad_hosts(tmp_path: Path, hosts: Any) -> None:
    init_ca(tmp_path)
    with pytest.raises(ValueError):
        issue_node(tmp_path, 1, hosts)


@pytest.mark.parametrize("name", ["", "a b", "../x", "x/y", "ä", "x" * 58, "a\n"])
def test_bad_client_names(tmp_path: Path, name: str) -> None:
    init_ca(tmp_path)
    with pytest.raises(ValueError, match="client name"):
        issue_client(tmp_path, name)


def test_longest_client_name(tmp_path: Path) -> None:
    init_ca(tmp_path)
    crt, _ = issue_client(tmp_path, "A-z_0.9" + "x" * 50)
    assert describe(crt)["subject_cn"] == "client-A-z_0.9" + "x" * 50


def test_missing_and_corrupt_ca(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kvraft certs init") as missing:
        issue_node(tmp_path, 1, ["127.0.0.1"])
    assert str(tmp_path) in str(missing.value)
    init_ca(tmp_path)
    (tmp_path / CA_KEY).write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match=str(tmp_path / CA_KEY)):
        issue_client(tmp_path, "bob")
    other = tmp_path / "other"
    init_ca(other)
    (tmp_path / CA_KEY).write_bytes((other / CA_KEY).read_bytes())  # a key of another CA
    with pytest.raises(ValueError, match="not the EC private key"):
        issue_client(tmp_path, "bob")
    (tmp_path / CA_CERT).write_text("not a certificate")
    with pytest.raises(ValueError, match=str(tmp_path / CA_CERT)):
        issue_client(tmp_path, "bob")
    assert not (tmp_path / "client-bob.key").exists()


# --- node_id_of ----------------------------------------------------------------------------


def _subject(*cns: str) -> dict[str, Any]:
    return {"subject": ((("organizationName", "kvraft"),), *((("commonName", cn),) for cn in cns))}


@pytest.mark.parametrize(("peercert", "expected"), [
    (_subject("node-1"), 1),
    (_subject("node-42"), 42),
    (_subject("node-1234567890123"), 1234567890123),
    (None, None),
    ({}, None),
    ({"subject": ()}, None),
    (_subject(), None),
    (_subject("node-0"), None),
    (_subject("node-01"), None),
    (_subject("node-+3"), None),
    (_subject("node--3"), None),
    (_subject("node-"), None),
    (_subject("node-3x"), None),
    (_subject("node-3\n"), None),
    (_subject(" node-3"), None),
    (_subject("Node-3"), None),
    (_subject("client-node-3"), None),
    (_subject("client-alice"), None),
    (_subject("node-\u0663"), None),  # ARABIC-INDIC DIGIT THREE
    (_subject("node-\uff13"), None),  # FULLWIDTH DIGIT THREE
    (_subject("node-3", "node-3"), None),  # two CNs: ambiguous
    ({"subject": "node-3"}, None),
    ({"subject": 3}, None),
    ({"subject": ((("commonName", 3),),)}, None),
])
def test_node_id_of(peercert: dict[str, Any] | None, expected: int | None) -> None:
    assert node_id_of(peercert) == expected


# --- real TLS over 127.0.0.1 ---------------------------------------------------------------


def _server_ctx(directory: Path, stem: str, ca_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / f"{stem}.crt", directory / f"{stem}.key")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(ca_dir / CA_CERT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def _client_ctx(ca_dir: Path, directory: Path | None = None, stem: str = "") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca_dir / CA_CERT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if directory is not None:
        ctx.load_cert_chain(directory / f"{stem}.crt", directory / f"{stem}.key")
    return ctx


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "127.0.0.1"
               ) -> tuple[Any, BaseException | None]:
    """(what the server saw: getpeercert() or its error, the client's error or None)."""
    seen: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server.wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                seen["peer"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_error: BaseException | None = None
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname=hostname) as tls:
                if tls.recv(2) != b"ok":
                    raise ConnectionError("the server closed without a greeting")
        except (ssl.SSLError, OSError) as exc:
            client_error = exc
        thread.join(10)
    assert not thread.is_alive()
    return seen["peer"], client_error


def test_node_to_node_handshake(pki: dict[str, Path]) -> None:
    good = pki["good"]
    peer, err = _handshake(_server_ctx(good, "node-1", good), _client_ctx(good, good, "node-2"))
    assert err is None and isinstance(peer, dict)
    assert node_id_of(peer) == 2


def test_client_cert_is_not_a_node(pki: dict[str, Path]) -> None:
    good = pki["good"]
    peer, err = _handshake(_server_ctx(good, "node-1", good),
                           _client_ctx(good, good, "client-alice"))
    assert err is None and isinstance(peer, dict)
    assert (("commonName", "client-alice"),) in peer["subject"]
    assert node_id_of(peer) is None


def test_no_client_cert_is_not_a_node(pki: dict[str, Path]) -> None:
    good = pki["good"]
    peer, err = _handshake(_server_ctx(good, "node-1", good), _client_ctx(good))
    assert err is None and peer is None  # getpeercert() without a certificate
    assert node_id_of(peer) is None


def test_client_cert_from_another_ca_is_refused(pki: dict[str, Path]) -> None:
    good, evil = pki["good"], pki["evil"]
    peer, err = _handshake(_server_ctx(good, "node-1", good), _client_ctx(good, evil, "node-2"))
    assert isinstance(peer, ssl.SSLCertVerificationError)  # the server refuses it
    assert err is not None  # and the client hears so (in TLS 1.3, after its own handshake)


def test_server_cert_from_another_ca_is_refused(pki: dict[str, Path]) -> None:
    good, evil = pki["good"], pki["evil"]
    peer, err = _handshake(_server_ctx(evil, "node-1", evil), _client_ctx(good, good, "node-2"))
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert isinstance(peer, ssl.SSLError)


def test_hostname_outside_the_sans_is_refused(pki: dict[str, Path]) -> None:
    good = pki["good"]  # node-2's certificate names 127.0.0.1 only
    _, err = _handshake(_server_ctx(good, "node-2", good), _client_ctx(good), hostname="localhost")
    assert isinstance(err, ssl.SSLCertVerificationError)
    _, err = _handshake(_server_ctx(good, "node-1", good), _client_ctx(good), hostname="localhost")
    assert err is None


def test_client_cert_cannot_serve(pki: dict[str, Path]) -> None:
    good = pki["good"]  # clientAuth only: no serverAuth
    _, err = _handshake(_server_ctx(good, "client-alice", good), _client_ctx(good))
    assert isinstance(err, ssl.SSLCertVerificationError) and "purpose" in str(err)


# --- the command line ----------------------------------------------------------------------


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(certs_cli, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_cli_init_issue_show(tmp_path: Path) -> None:
    d = str(tmp_path / "certs")
    result = _cli("init", "--dir", d, "--name", "prod")
    assert result.exit_code == 0, result.output
    assert f"wrote {Path(d) / CA_CERT}" in result.output and str(Path(d) / CA_KEY) in result.output
    result = _cli("issue", "node", "--id", "1", "--host", "127.0.0.1", "--host", "kv1", "--dir", d)
    assert result.exit_code == 0, result.output
    assert str(Path(d) / "node-1.crt") in result.output
    assert str(Path(d) / "node-1.key") in result.output
    out = tmp_path / "clients"
    result = _cli("issue", "client", "--name", "ops", "--dir", str(out), "--ca-dir", d)
    assert result.exit_code == 0, result.output
    assert str(out / "client-ops.crt") in result.output
    result = _cli("show", str(Path(d) / "node-1.crt"))
    assert result.exit_code == 0, result.output
    assert "subject_cn: node-1" in result.output and "issuer_cn: prod CA" in result.output
    assert "sans: 127.0.0.1, kv1" in result.output and "fingerprint_sha256: " in result.output
    assert _load(Path(d) / "node-1.crt").subject.rfc4514_string() == "CN=node-1,O=prod"


def test_cli_errors_exit_1(tmp_path: Path) -> None:
    d = str(tmp_path)
    result = _cli("issue", "node", "--id", "1", "--host", "127.0.0.1", "--dir", d)
    assert result.exit_code == 1 and "kvraft certs init" in result.output
    assert _cli("init", "--dir", d).exit_code == 0
    result = _cli("init", "--dir", d)
    assert result.exit_code == 1 and "already exists" in result.output
    assert _cli("init", "--dir", d, "--force").exit_code == 0
    result = _cli("issue", "client", "--name", "bad name", "--dir", d)
    assert result.exit_code == 1 and "client name" in result.output
    result = _cli("issue", "node", "--id", "0", "--host", "127.0.0.1", "--dir", d)
    assert result.exit_code == 1 and "positive" in result.output
    result = _cli("show", str(tmp_path / "nope.crt"))
    assert result.exit_code == 1 and "nope.crt" in result.output
