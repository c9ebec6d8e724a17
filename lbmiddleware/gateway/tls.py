"""TLS termination: the gateway's certificate and key (``LB_TLS_CERT`` / ``LB_TLS_KEY``)
loaded once before the server starts (:func:`check_certificate`), so that a bad pair is a
setting's error naming the file, not a server's traceback (granian's main process raises an
``ssl.SSLError`` that reads as a socket error) or a worker that dies after the banner.

granian and uvicorn each load the files again themselves (they take paths); both serve TLS
1.2 and 1.3 (granian's own default minimum is 1.3: set to 1.2 here, as nginx's
``ssl_protocols`` and uvicorn's defaults are, so that older clients still connect).
"""

from __future__ import annotations

import dataclasses
import ssl

from ..errors import ConfigError
from ..gateway_settings import GatewaySettings
from ..upstream.tls import TLSSettings, _no_password, _read, new_backend_ssl_context

__all__ = ["check_certificate", "check_backend_files"]


def check_certificate(settings: GatewaySettings) -> None:
    """ConfigError naming the file and what is wrong when ``LB_TLS_CERT`` / ``LB_TLS_KEY``
    cannot serve TLS together: not PEM, an encrypted key (no passphrase is taken: the server
    would ask for it on a terminal), or a key that is not the certificate's. Nothing to do
    when TLS is off."""
    cert, key = settings.tls_cert, settings.tls_key
    if not cert:
        return
    if b"-----BEGIN CERTIFICATE-----" not in _read(cert, "LB_TLS_CERT"):
        raise ConfigError(f"LB_TLS_CERT has value {cert!r}: no PEM certificate in it "
                          f"('-----BEGIN CERTIFICATE-----')")
    text = _read(key, "LB_TLS_KEY")
    if b"PRIVATE KEY-----" not in text:
        raise ConfigError(f"LB_TLS_KEY has value {key!r}: no PEM private key in it "
                          f"('-----BEGIN PRIVATE KEY-----')")
    if b"ENCRYPTED" in text:
        raise ConfigError(f"LB_TLS_KEY has value {key!r}: the key is encrypted; the gateway "
                          f"takes no passphrase (openssl pkey -in KEY -out PLAIN)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        why = ("the key is not the certificate's" if exc.reason == "KEY_VALUES_MISMATCH"
               else f"cannot load them: {exc.reason or exc}")
        raise ConfigError(f"LB_TLS_CERT ({cert!r}) and LB_TLS_KEY ({key!r}): {why}") from None


@dataclasses.dataclass(frozen=True)
class _Files:
    backend_ca: str
    backend_client_cert: str
    backend_client_key: str
    backend_verify: bool = True


def check_backend_files(settings: TLSSettings) -> None:
    """ConfigError naming the variable and the file when a pool's backend TLS files
    (``LB_BACKEND_CA``, ``LB_BACKEND_CLIENT_CERT`` / ``_KEY``) cannot be loaded: found before
    the server starts, not by the first pool built (after the banner under uvicorn, in
    granian's worker as a traceback). The CA file only when verification is on (off, it is
    not used); no WARNING for verification off here (the pool says it)."""
    ca = settings.backend_ca if settings.backend_verify else ""
    if ca or settings.backend_client_cert:
        new_backend_ssl_context(_Files(ca, settings.backend_client_cert,
                                       settings.backend_client_key))

