"""The transports' errors: how httpx's exceptions end an attempt (one table), and what the
caller gets when no attempt succeeded.

An inner transport's :class:`httpx.TransportError` is a failure of its backend unless the
table says it is not (a proxy's fault, a request httpx refused to send): :func:`failure`
turns it into the attempt's :class:`~lbmiddleware.core.attempts.Outcome`, or raises it
again as it is. When every attempt raised, the caller gets the last exception again, of the
same class, naming the backends tried (:func:`naming_backends`). When the pool has no
backend to try, :class:`NoHealthyBackendError`; when the transport was closed, a
``RuntimeError`` (:func:`closed_error`), as a closed ``httpx.Client`` raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from ..core.attempts import Outcome
from ..errors import NoHealthyBackend

if TYPE_CHECKING:
    from ..core.backend import Backend

__all__ = ["NoHealthyBackendError", "closed_error", "failure", "naming_backends"]


class NoHealthyBackendError(NoHealthyBackend, httpx.ConnectError):
    """No backend is left to try; also an ``httpx.ConnectError``, so ``except
    httpx.TransportError`` (or ``httpx.HTTPError``) catches it, as it would a refused
    connection."""


def closed_error(name: str) -> RuntimeError:
    """What a closed transport (``name``: its class) raises when asked to send: it closed
    with its client, and with it the pool it built (sources and health checks stopped), so
    it does not serve on from a pool that no longer follows its backends."""
    return RuntimeError(
        f"{name} was closed (its client exited, or close() was called), and with it the pool "
        "it built: keep one client open for the app's life, or pass balancer=pool to share "
        "a pool that outlives its clients, with a new transport for each client")


# How an exception from an inner transport ends an attempt: the first row naming its class
# gives (sent, timeout); a row with ``sent`` None is no fault of the backend and is raised as
# it is (the attempt released, not reported). A connect failure was not sent: any method may
# be retried. PoolTimeout is this client's own pool being full, LocalProtocolError and
# UnsupportedProtocol a request httpx would not send.
_FAILURES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], bool | None, bool], ...] = (
    ((httpx.ProxyError, httpx.PoolTimeout, httpx.LocalProtocolError,
      httpx.UnsupportedProtocol), None, False),
    (httpx.ConnectTimeout, False, True),
    (httpx.ConnectError, False, False),             # refused, unreachable, TLS handshake
    (httpx.TimeoutException, True, True),           # read or write timed out
    (httpx.TransportError, True, False),            # reset, closed before the head, ...
)


def failure(exc: httpx.TransportError, latency: float) -> Outcome:
    """The outcome of an attempt that raised ``exc``, its text in ``error``; a row without
    an outcome (not the backend's fault) raises ``exc`` again."""
    for kinds, sent, timeout in _FAILURES:
        if isinstance(exc, kinds):
            if sent is None:
                raise exc
            return Outcome(ok=False, latency=latency, sent=sent, timeout=timeout,
                           error=describe(exc))
    raise exc                                       # (the last row takes them all)


def describe(exc: BaseException) -> str:
    """An exception as a failure's text: its message, else its class (httpx's timeouts
    may carry an empty one)."""
    return str(exc) or type(exc).__name__


def naming_backends(exc: httpx.TransportError, request: httpx.Request,
                    tried: Sequence[Backend]) -> httpx.TransportError:
    """``exc`` for the caller: the same class, its message followed by the backends tried
    (also in ``backends_tried``), for the caller's ``request``. An exception class that
    cannot be made from a message alone is returned as it is, with ``backends_tried``."""
    urls = tuple(b.url for b in tried)
    try:
        named = type(exc)(f"{exc} (backends tried: {', '.join(urls)})", request=request)
    except Exception:           # a subclass with another signature: keep it as it is
        named = exc
    named.backends_tried = urls  # type: ignore[attr-defined]
    return named
