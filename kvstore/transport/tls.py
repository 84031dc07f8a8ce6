"""The server side of TLS: one ``ssl.SSLContext`` for every TCP listener.

``kvstore serve --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]`` resolves to a
``TlsFiles`` (``kvstore.config``); ``server_context`` turns it into the context that the HTTP
listener (uvicorn's ``ssl_context_factory``), the bulk port (``start_bulk_server(ssl=)``) and any
later TCP listener (the RESP port) pass to asyncio. One builder, so every listener speaks the
same protocol versions and verifies client certificates the same way.

- TLS 1.2 at least, the ``ssl`` module's default server ciphers (``create_default_context``).
- ``client_ca``: mutual TLS. A client must present a certificate that chains to one of these
  CAs or the handshake fails (the connection closes before a byte of the protocol). The
  certificate authenticates the machine; the tenant still signs (SigV4) or sends AUTH as
  without TLS.
- ``peer_context``: the client side a node uses to reach the other nodes' TLS bulk ports (pod
  forwarding): it verifies them with the client CA when there is one (the pod's CA), else the
  system trust store, and presents the node's own certificate (so mutual TLS between nodes
  needs node certificates valid for client authentication too).
- Failures name the file and what is wrong with it (missing, unreadable, not PEM, a key that
  does not match the certificate) as ``TlsSetupError``; ``kvstore serve`` prints them and exits
  with status 2, before it opens the store.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


class TlsSetupError(ValueError):
    """A certificate, key or CA file cannot make a server context."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None  # set: mutual TLS, a client certificate is required


def _readable(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise TlsSetupError(f"{what} {path!r} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError as exc:
        raise TlsSetupError(f"{what} {path!r} is not readable: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in head:
        raise TlsSetupError(f"{what} {path!r} is not PEM (no '-----BEGIN' line)")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The listeners' context; ``TlsSetupError`` with the file and the reason when it cannot."""
    _readable(files.cert, "--tls-cert")
    _readable(files.key, "--tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in str(reason).upper():
            raise TlsSetupError(f"--tls-key {files.key!r} does not match the certificate in "
                                f"--tls-cert {files.cert!r}") from None
        raise TlsSetupError(f"--tls-cert {files.cert!r} / --tls-key {files.key!r}: "
                            f"{reason}") from None
    if files.client_ca is not None:
        _readable(files.client_ca, "--tls-client-ca")
        try:
            ctx.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"--tls-client-ca {files.client_ca!r}: "
                                f"{exc.reason or exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_context(files: TlsFiles) -> ssl.SSLContext:
    """The context for connections to the other nodes of a pod (their bulk ports)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.client_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"--tls-cert {files.cert!r} / --tls-key {files.key!r}: "
                            f"{exc.reason or exc}") from None
    return ctx
