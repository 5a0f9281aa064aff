"""A cluster CA and certificates for mutual TLS: nodes are ``CN=node-<id>`` (serverAuth and
clientAuth, since nodes dial each other), clients ``CN=client-<name>`` (clientAuth only)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft.transport.tls import node_id_of

__all__ = ["CA_CERT", "CA_KEY", "describe", "init_ca", "issue_client", "issue_node", "node_id_of"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_DIR = "kvraft-certs"
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,57}")  # "client-" + 57 = 64, the CN's limit
_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
Key = ec.EllipticCurvePrivateKey


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM certificate ({exc})") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sign_and_save(directory: Path, stem: str, subject: x509.Name, issuer: x509.Certificate | None,
                   signer: Key | None, days: int, force: bool, usages: Sequence[str],
                   extensions: Sequence[x509.ExtensionType]) -> tuple[Path, Path]:
    """A fresh P-256 key and its certificate (self-signed when ``issuer`` is None), saved."""
    crt_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    if key_path.exists() and not force:
        raise FileExistsError(f"{key_path} already exists (use --force / force=True to replace it)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(min(not_after, issuer.not_valid_after_utc) if issuer else not_after)
               .add_extension(x509.BasicConstraints(ca=issuer is None,
                                                    path_length=None if issuer else 0), True)
               .add_extension(x509.KeyUsage(**{u: u in usages for u in _USAGES}), True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = builder.sign(signer or key, hashes.SHA256())
    _write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), 0o600)
    _write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path


def init_ca(directory: Path, *, name: str = "kvraft", days: int = 3650, force: bool = False
            ) -> tuple[Path, Path]:
    """Create the cluster CA, ``<directory>/ca.crt`` and ``ca.key`` (0600); ``name`` is its O."""
    directory = Path(directory)
    if not 1 <= len(name) <= 61:
        raise ValueError(f"the cluster name must be 1 to 61 characters, not {name!r}")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    return _sign_and_save(directory, "ca", subject, None, None, days, force,
                          ("key_cert_sign", "crl_sign"), ())


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, Key]:
    crt_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    for path in (crt_path, key_path):
        if not path.is_file():
            raise FileNotFoundError(f"no CA at {path}: run `kvraft certs init --dir {ca_dir}`")
    cert = _load_cert(crt_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Key) or key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the EC private key of {crt_path}")
    return cert, key


def _issue(directory: Path, stem: str, ca_dir: Path | None, days: int, force: bool,
           eku: list[x509.ObjectIdentifier], sans: list[x509.GeneralName]) -> tuple[Path, Path]:
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(Path(ca_dir) if ca_dir is not None else directory)
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[:1]
    skis = [e.value for e in ca_cert.extensions if isinstance(e.value, x509.SubjectKeyIdentifier)]
    aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(skis[0]) if skis
           else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()))
    exts = [x509.ExtendedKeyUsage(eku), aki, *([x509.SubjectAlternativeName(sans)] if sans else [])]
    return _sign_and_save(directory, stem,
                          x509.Name([*org, x509.NameAttribute(NameOID.COMMON_NAME, stem)]),
                          ca_cert, ca_key, days, force, ("digital_signature",), exts)


def issue_node(directory: Path, node_id: int, hosts: Sequence[str], *, ca_dir: Path | None = None,
               days: int = 825, force: bool = False) -> tuple[Path, Path]:
    """``<directory>/node-<id>.crt/.key`` for a node reachable at ``hosts`` (IPs or DNS names)."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 1:
        raise ValueError(f"node id must be a positive integer, not {node_id!r}")
    if isinstance(hosts, str) or not hosts:
        raise ValueError("a node certificate needs at least one host (an IP address or DNS name)")
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or not host.isascii() or any(c.isspace() or c in "/:@" for c in host):
                raise ValueError(f"not an IP address or ASCII DNS name: {host!r}") from None
            sans.append(x509.DNSName(host))
    return _issue(directory, f"node-{node_id}", ca_dir, days, force,
                  [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], sans)


def issue_client(directory: Path, name: str, *, ca_dir: Path | None = None, days: int = 825,
                 force: bool = False) -> tuple[Path, Path]:
    """``<directory>/client-<name>.crt/.key``, good only for the client side of TLS."""
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name):
        raise ValueError(f"client name must match [A-Za-z0-9_.-]{{1,57}}, not {name!r}")
    return _issue(directory, f"client-{name}", ca_dir, days, force,
                  [ExtendedKeyUsageOID.CLIENT_AUTH], [])


def describe(path: Path) -> dict[str, Any]:
    """What ``kvraft certs show`` prints about a certificate file."""
    cert = _load_cert(Path(path))
    sans = [str(n.value) for e in cert.extensions
            if isinstance(e.value, x509.SubjectAlternativeName) for n in e.value]
    return {"subject_cn": _cn(cert.subject), "issuer_cn": _cn(cert.issuer),
            "not_after": cert.not_valid_after_utc.isoformat(), "sans": sans,
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper()}


def _cn(name: x509.Name) -> str | None:
    return next((str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)), None)


def _run(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``fn``, print what it wrote (or the dict it returned); errors exit 1, no traceback."""
    try:
        out = fn(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in ([f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in out.items()]
                 if isinstance(out, dict) else [f"wrote {path}" for path in out]):
        click.echo(line)


_dir = click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                    show_default=True, help="Where to write the files.")
_force = click.option("--force", is_flag=True, help="Replace existing files.")


def _issue_opts(f: Any) -> Any:
    return _dir(click.option("--ca-dir", type=click.Path(path_type=Path), default=None,
                             help="The directory of ca.crt/ca.key (default: --dir).")(_force(f)))


@click.group("certs")
def certs_cli() -> None:
    """A cluster CA and certificates for mutual TLS."""


@certs_cli.command("init")
@_dir
@click.option("--name", default="kvraft", show_default=True, help="The cluster name (the O).")
@_force
def _init_cmd(directory: Path, name: str, force: bool) -> None:
    """Create the cluster CA (ca.crt, ca.key)."""
    _run(init_ca, directory, name=name, force=force)


@certs_cli.group("issue")
def _issue_cli() -> None:
    """Issue a node or client certificate signed by the CA."""


@_issue_cli.command("node")
@click.option("--id", "node_id", type=int, required=True, help="The node id (positive).")
@click.option("--host", "hosts", multiple=True, required=True, help="An IP or DNS name (repeat).")
@_issue_opts
def _node_cmd(node_id: int, hosts: tuple[str, ...], directory: Path, ca_dir: Path | None,
              force: bool) -> None:
    """node-<id>.crt/.key for serving and dialing peers."""
    _run(issue_node, directory, node_id, hosts, ca_dir=ca_dir, force=force)


@_issue_cli.command("client")
@click.option("--name", required=True, help="The client name ([A-Za-z0-9_.-]).")
@_issue_opts
def _client_cmd(name: str, directory: Path, ca_dir: Path | None, force: bool) -> None:
    """client-<name>.crt/.key for a client."""
    _run(issue_client, directory, name, ca_dir=ca_dir, force=force)


@certs_cli.command("show")
@click.argument("file", type=click.Path(path_type=Path))
def _show_cmd(file: Path) -> None:
    """Print a certificate's subject, issuer, expiry, SANs and fingerprint."""
    _run(describe, file)
