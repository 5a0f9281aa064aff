"""kvraft node-init's local half: what it writes from the parameters SSM returned (the
SSM half runs against moto in tests/test_terraform.py's boot test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvraft import certs
from kvraft.nodeinit import fetch, node_init
from kvraft.transport.tls import TLS, TLSFiles


def _params(tmp_path: Path, secret: str = "s" * 32) -> dict[str, str]:
    ca = tmp_path / "ca"
    certs.init_ca(ca, name="t")
    return {"secret": secret, "tls/ca.crt": (ca / "ca.crt").read_text(),
            "tls/ca.key": (ca / "ca.key").read_text()}


def test_writes_secret_ca_and_a_node_certificate_and_never_the_ca_key(tmp_path: Path) -> None:
    out = tmp_path / "run"
    written = node_init(out, 12, ["10.42.1.22"], _params(tmp_path))
    assert sorted(p.name for p in written) == ["ca.crt", "node-12.crt", "node-12.key", "secret"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.iterdir())
    assert (out / "secret").read_text() == "s" * 32 + "\n"
    info = certs.describe(out / "node-12.crt")
    assert "10.42.1.22" in str(info) and "node-12" in str(info)
    TLS(TLSFiles(out / "ca.crt", out / "node-12.crt", out / "node-12.key"))  # loads
    assert not any("PRIVATE KEY" in p.read_text() and p.name != "node-12.key"
                   for p in out.rglob("*") if p.is_file())
    # a second start (same CA) issues a fresh key and certificate in place
    params = _params(tmp_path / "again")
    node_init(out, 12, ["10.42.1.22"], params)
    before = (out / "node-12.key").read_bytes(), (out / "node-12.crt").read_bytes()
    node_init(out, 12, ["10.42.1.22"], params)
    after = (out / "node-12.key").read_bytes(), (out / "node-12.crt").read_bytes()
    assert after[0] != before[0] and after[1] != before[1]


def test_a_short_secret_and_a_bad_ca_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter than 16"):
        node_init(tmp_path / "a", 1, ["10.0.0.1"], _params(tmp_path, secret="short"))
    bad = _params(tmp_path / "b")
    bad["tls/ca.key"] = "not a key"
    with pytest.raises(ValueError):
        node_init(tmp_path / "c", 1, ["10.0.0.1"], bad)
    assert not any((tmp_path / "c").glob(".ca-*"))  # the work directory is gone


@pytest.mark.parametrize("prefix", ["kvraft/prod", "/kvraft/prod/", "/a//b", "/x y"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        fetch(prefix, region="us-east-1")
