"""How a pool's https backends are reached: the one copy of the rule that turns the backend
TLS settings (``LB_BACKEND_CA``, ``LB_BACKEND_VERIFY``, ``LB_BACKEND_CLIENT_CERT``,
``LB_BACKEND_CLIENT_KEY``) into what each client library takes, and the words of a TLS failure.

* :func:`backend_ssl_context`: the :class:`ssl.SSLContext` the proxies' upstream client and
  the health checks share, built once per pool's settings (loading a CA file or the system
  store costs milliseconds; a context is safe to share between connections, threads and
  loops). It offers ALPN ``http/1.1`` (what they speak) and must not be changed by its users.
* :func:`new_backend_ssl_context`: a new context from the same rule, for a library that changes
  the context it is given (httpcore sets its ALPN protocols on it at each connect: given the
  shared one, an httpx transport with HTTP/2 would make the upstream client offer ``h2``).
* :func:`backend_verify_cert`: requests' ``verify=`` and ``cert=`` (the adapter's).

The rule, as curl, requests and nginx's ``proxy_ssl_*`` have it: ``LB_BACKEND_CA`` set, the
backends' certificates are verified against that file alone (not the system's store: a
private CA is trusted for this pool without being trusted for everything else); empty, against
the system's store (``ssl.create_default_context()``: OpenSSL's default paths, which
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` change). The name checked and sent (SNI) is the
backend's ``tls_server_name`` (the URL's host, or the server name a DNS source gives it): the
callers pass it. ``LB_BACKEND_VERIFY=false`` verifies neither certificate nor name (the CA file,
if any, unused) and logs a WARNING once per pool's settings. ``LB_BACKEND_CLIENT_CERT`` (and
``LB_BACKEND_CLIENT_KEY`` when the key is in a file of its own) is the certificate sent to a
backend that asks for one (mutual TLS). A file that cannot be loaded raises
:class:`~lbmiddleware.errors.ConfigError` naming the variable, when the context is built.

A failed handshake is a connect failure: the request never reached the backend, so it is
retried on another backend whatever its method (:class:`~.errors.TLSError`, ``sent`` false).
That includes the verdict a TLS 1.3 server gives on the client's certificate, which arrives
after the client's side of the handshake ended, as an alert in place of the first answer
(:mod:`.connection` tells it apart). Standard library only.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, TypeGuard, runtime_checkable

from ..errors import ConfigError

__all__ = ["TLSSettings", "backend_ssl_context", "system_ssl_context",
           "new_backend_ssl_context", "backend_verify_cert", "tls_failure_text",
           "handshake_verdict"]

logger = logging.getLogger("lbmiddleware")

ALPN = ("http/1.1",)        # what the upstream client and the health checks speak
_PEM_CERTIFICATE = b"CERTIFICATE-----"      # (also "BEGIN TRUSTED CERTIFICATE")


@runtime_checkable
class TLSSettings(Protocol):
    """The settings the rule reads (:class:`~lbmiddleware.core.settings.Settings` has them)."""

    @property
    def backend_ca(self) -> str: ...

    @property
    def backend_verify(self) -> bool: ...

    @property
    def backend_client_cert(self) -> str: ...

    @property
    def backend_client_key(self) -> str: ...


_lock = threading.Lock()
# Per pool's settings (frozen, compared by value; held weakly: a pool that goes takes its
# context along). Settings of nothing but defaults share one context (the system's store).
_contexts: weakref.WeakKeyDictionary[Any, ssl.SSLContext] = weakref.WeakKeyDictionary()
_warned: weakref.WeakSet[Any] = weakref.WeakSet()
_default: ssl.SSLContext | None = None


def backend_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """The shared context for ``settings``' https backends (see the module's text): the same
    object for the same settings, built on the first call. Not to be changed, nor handed to
    a library that changes it (:func:`new_backend_ssl_context` is for those)."""
    global _default
    with _lock:
        if _is_default(settings):
            if _default is None:
                _default = _build(settings)
            return _default
        try:
            context = _contexts.get(settings)
        except TypeError:           # settings that cannot be a key: built each time
            return _build(settings)
        if context is None:
            context = _contexts[settings] = _build(settings)
        return context


def system_ssl_context() -> ssl.SSLContext:
    """The shared context of settings left at their defaults: the system's store, names
    verified (what :class:`~.pool.Upstream` and the health checks use when given none)."""
    return backend_ssl_context(_DEFAULTS)


class _Defaults:
    backend_ca = ""
    backend_verify = True
    backend_client_cert = ""
    backend_client_key = ""


_DEFAULTS = _Defaults()


def new_backend_ssl_context(settings: TLSSettings, *, alpn: Iterable[str] = ALPN
                            ) -> ssl.SSLContext:
    """A new context from the same rule, offering ``alpn``: for a library that changes the
    context it is given (httpx: one per transport)."""
    with _lock:
        return _build(settings, alpn)


def backend_verify_cert(settings: TLSSettings
                        ) -> tuple[bool | str, str | tuple[str, str] | None]:
    """requests' ``verify=`` and ``cert=`` for ``settings``: ``(True, None)`` by default (the
    library's own store: certifi's for requests), the CA file, ``False`` when verification
    is off (WARNING once, as for a context), and the client certificate with its key."""
    if not settings.backend_verify:
        with _lock:
            _warn_unverified(settings)
        verify: bool | str = False
    else:
        verify = settings.backend_ca or True
    cert = settings.backend_client_cert
    key = settings.backend_client_key
    return verify, ((cert, key) if cert and key else cert or None)


def _is_default(settings: TLSSettings) -> bool:
    return (settings.backend_verify and not settings.backend_ca
            and not settings.backend_client_cert)


def _build(settings: TLSSettings, alpn: Iterable[str] = ALPN) -> ssl.SSLContext:
    """A client context for ``settings`` (under :data:`_lock`)."""
    if settings.backend_verify:
        context = ssl.create_default_context(cafile=_ca(settings.backend_ca) or None)
    else:
        _warn_unverified(settings)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.backend_client_cert:
        _load_client_certificate(context, settings.backend_client_cert,
                                 settings.backend_client_key)
    context.set_alpn_protocols(list(alpn))
    return context


def _ca(path: str) -> str:
    """``path`` when it holds a PEM certificate; ConfigError otherwise (OpenSSL's own words
    for a file without one are a bare "[X509: NO_CERTIFICATE_OR_CRL_FOUND]")."""
    if path and _PEM_CERTIFICATE not in _read(path, "LB_BACKEND_CA"):
        raise ConfigError(f"LB_BACKEND_CA has value {path!r}: no PEM certificate in it "
                          f"('-----BEGIN CERTIFICATE-----')")
    return path


def _load_client_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the client certificate and its key (in ``key``, or in ``cert`` after the
    certificate); ConfigError naming the variable and the file when they cannot be (OpenSSL
    says "PEM lib" for most of it)."""
    if _PEM_CERTIFICATE not in _read(cert, "LB_BACKEND_CLIENT_CERT"):
        raise ConfigError(f"LB_BACKEND_CLIENT_CERT has value {cert!r}: no PEM certificate "
                          f"in it ('-----BEGIN CERTIFICATE-----')")
    variable, path = ("LB_BACKEND_CLIENT_KEY", key) if key else ("LB_BACKEND_CLIENT_CERT", cert)
    text = _read(path, variable)
    if b"PRIVATE KEY-----" not in text:
        raise ConfigError(f"{variable} has value {path!r}: no PEM private key in it"
                          + ("" if key else " (set LB_BACKEND_CLIENT_KEY to the key's file)"))
    if b"ENCRYPTED" in text:
        raise ConfigError(f"{variable} has value {path!r}: the key is encrypted; no "
                          f"passphrase is taken (openssl pkey -in KEY -out PLAIN)")
    try:
        context.load_cert_chain(cert, key or None, password=_no_password)
    except ssl.SSLError as exc:
        why = ("the key is not the certificate's" if exc.reason == "KEY_VALUES_MISMATCH"
               else f"cannot load them: {exc.reason or exc}")
        raise ConfigError(f"LB_BACKEND_CLIENT_CERT ({cert!r}) and its key ({path!r}): "
                          f"{why}") from None


def _read(path: str, variable: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{variable} has value {path!r}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    """Never a prompt on the terminal: an encrypted key fails to load."""
    return b""


def _warn_unverified(settings: TLSSettings) -> None:
    """The WARNING that verification is off, once per settings (under :data:`_lock`)."""
    try:
        if settings in _warned:
            return
        _warned.add(settings)
    except TypeError:
        pass                        # cannot be remembered: said each time
    backends = [getattr(b, "url", str(b)) for b in getattr(settings, "backends", ())]
    shown = ", ".join(backends[:3]) + (f" and {len(backends) - 3} more"
                                       if len(backends) > 3 else "")
    logger.warning("LB_BACKEND_VERIFY is false: the certificates and names of https backends "
                   "are not verified (%s); for tests only", shown or "no backends")


# -- the words of a failure ------------------------------------------------------------

# OpenSSL's text in an SSLError's message: "[SSL: REASON] the words (_ssl.c:1006)".
_WORDS = re.compile(r"\]\s*(.+?)(?:\s*\(_ssl\.c:\d+\))?$")


def tls_failure_text(exc: ssl.SSLError) -> str:
    """``exc`` in the words of a failed attempt's log line and a probe's reason:
    ``TLS: certificate verify failed: unable to get local issuer certificate``, ``TLS:
    tlsv13 alert certificate required``, ``TLS: wrong version number`` (an http port behind
    an https URL)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "TLS: the backend closed the connection"
    match = _WORDS.search(str(exc))
    if match:
        return f"TLS: {match.group(1)}"
    reason = getattr(exc, "reason", None)
    return f"TLS: {reason.lower().replace('_', ' ') if reason else exc}"


def handshake_verdict(exc: BaseException | None) -> TypeGuard[ssl.SSLError]:
    """Whether ``exc``, ending a connection before the first answer's first byte, is the
    server's verdict on the handshake (a TLS alert: under TLS 1.3 a rejected client
    certificate is said after the client's side of the handshake ended)."""
    return isinstance(exc, ssl.SSLError) and "ALERT" in (getattr(exc, "reason", None) or "")
