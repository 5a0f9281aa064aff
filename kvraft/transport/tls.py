"""Transport security: the TLS contexts of every connection kvraft makes or accepts.

One port serves clients and peers, so the server asks every connection for a
certificate and requires none (``CERT_OPTIONAL``): a certificate that is offered
must be signed by the cluster CA, or the handshake fails. Peer routes then require a
*node* certificate (subject ``CN=node-<id>``), and the Raft stream requires the
certificate of the very node it claims to be (:func:`peer_node_id`). Clients need no
certificate; they are authorized by their token.

Outgoing connections (peers, the controller, range transfers, snapshots, clients,
CLIs) verify the server against the cluster CA and its host name (the node
certificate's subject alternative names), and present a certificate when one is
configured.

:meth:`TLS.reload` re-reads the certificate and key in place (``SIGHUP``): new
connections use the new certificate, open ones keep theirs, so a rotation does not drop
a group's streams.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NODE_CN = re.compile(r"node-([1-9][0-9]*)")  # canonical str(int) only: no 0, +, 01, non-ASCII


def node_id_of(peercert: dict[str, Any] | None) -> int | None:
    """The node id of a ``getpeercert()`` dict whose one subject CN is exactly ``node-<id>``."""
    try:
        cns = [value for rdn in (peercert or {}).get("subject", ())
               for key, value in rdn if key == "commonName"]
    except (TypeError, ValueError, AttributeError):
        return None
    match = _NODE_CN.fullmatch(cns[0]) if len(cns) == 1 and isinstance(cns[0], str) else None
    return int(match.group(1)) if match else None


class TLSError(ValueError):
    """A TLS file is missing or unusable (the message names it)."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    ca: Path
    """The cluster CA's certificate (what every peer and server is checked against)."""
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TLSError("a TLS certificate needs its key and a key its certificate "
                           "(--tls-cert and --tls-key together)")


class TLS:
    """The contexts built from :class:`TLSFiles` (a node's, or a client's)."""

    scheme = "https"
    ws_scheme = "wss"

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        # Only the cluster CA is trusted (not the system's store): a publicly trusted
        # certificate for a node's host name must not receive the secret or a token.
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check, CERT_REQUIRED
        self.client.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server: ssl.SSLContext | None = None
        self._load(self.client)

    def server(self) -> ssl.SSLContext:
        """The server context (needs a certificate)."""
        if self.files.cert is None:
            raise TLSError("a node serving TLS needs --tls-cert and --tls-key")
        if self._server is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self._load(ctx)
            self._server = ctx
        return self._server

    def reload(self) -> None:
        """Re-read the CA, certificate and key (after a rotation); raises TLSError and
        keeps the old ones if the new files are unusable."""
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._load(probe)  # check before touching the live contexts
        for ctx in (self.client, self._server):
            if ctx is not None:
                self._load(ctx)

    def _load(self, ctx: ssl.SSLContext) -> None:
        f = self.files
        try:
            ctx.load_verify_locations(cafile=str(f.ca))
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"cannot use the CA certificate {f.ca}: {e}") from None
        if f.cert is not None and f.key is not None:
            try:
                ctx.load_cert_chain(str(f.cert), str(f.key))
            except (OSError, ssl.SSLError) as e:
                raise TLSError(f"cannot use the certificate {f.cert} with key {f.key}: "
                               f"{e}") from None


def scheme(tls: TLS | None) -> str:
    return "http" if tls is None else TLS.scheme


def url(tls: TLS | None, addr: str, path: str = "") -> str:
    return f"{scheme(tls)}://{addr}{path}"


def client_ssl(tls: TLS | None) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` takes: the client context, or its default."""
    return True if tls is None else tls.client


def context(tls: TLS | None) -> ssl.SSLContext | None:
    """What ``urllib.request.urlopen(context=)`` takes."""
    return None if tls is None else tls.client


def peer_certificate(request: Any) -> dict[str, Any] | None:
    """The verified certificate the other end of ``request`` presented, if any."""
    transport = getattr(request, "transport", None)
    if transport is None:
        return None
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    cert = obj.getpeercert()
    return cert if isinstance(cert, dict) and cert else None


def peer_node_id(request: Any) -> int | None:
    """The node id that the request's client certificate names (``CN=node-<id>``)."""
    return node_id_of(peer_certificate(request))


ENV_CA, ENV_CERT, ENV_KEY = "KVRAFT_TLS_CA", "KVRAFT_TLS_CERT", "KVRAFT_TLS_KEY"


def from_paths(ca: str | Path | None, cert: str | Path | None = None,
               key: str | Path | None = None) -> TLS | None:
    """A :class:`TLS` from file names (None without a CA: plain HTTP)."""
    if not ca:
        if cert or key:
            raise TLSError("a TLS certificate needs the cluster CA too (--tls-ca)")
        return None
    return TLS(TLSFiles(Path(ca), Path(cert) if cert else None, Path(key) if key else None))
