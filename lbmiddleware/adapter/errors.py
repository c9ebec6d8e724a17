"""The adapter's errors: how requests' and urllib3's exceptions end an attempt (one table),
and what the caller gets when no attempt succeeded.

An attempt that raised is a failure of its backend (:data:`BACKEND_FAILURES`), and
:func:`failure` turns the exception into the attempt's
:class:`~lbmiddleware.core.attempts.Outcome` through :data:`_FAILURES`. When every attempt
raised, the caller gets the last exception again, of the same kind and with requests' own
arguments, naming the backends tried (:func:`naming_backends`). When the pool has no
backend to try, :class:`NoHealthyBackendError`.
"""

from __future__ import annotations

import functools
import http.client
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import requests
from requests.exceptions import (
    ChunkedEncodingError,
    ConnectTimeout,
    ProxyError,
    RequestException,
    RetryError,
    Timeout,
)
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from ..core.attempts import Outcome
from ..core.casts import format_duration
from ..errors import NoHealthyBackend
from ..upstream.tls import handshake_verdict, tls_failure_text

if TYPE_CHECKING:
    from requests.models import PreparedRequest

    from ..core.backend import Backend

__all__ = ["NoHealthyBackendError", "BACKEND_FAILURES", "failure", "naming_backends"]


class NoHealthyBackendError(NoHealthyBackend, requests.ConnectionError):
    """No backend is left to try; also a ``requests.ConnectionError``, so
    ``except requests.RequestException`` catches it."""


# Exceptions from the parent's send (or the body read) that are the backend's fault.
# ProxyError is a ConnectionError too, but it is the proxy's, and is tested for first.
# (ContentDecodingError is not: the body is decoded after the attempt, by requests.)
BACKEND_FAILURES = (requests.ConnectionError, Timeout, ChunkedEncodingError, RetryError)

# How an exception from the parent's send (or the body read) ends an attempt: the first row
# naming the exception's class, or that of the urllib3 error it wraps (``args[0]`` or its
# ``reason``), gives (sent, timeout). A connect failure was not sent: any method may be
# retried. A failed TLS handshake is one (:func:`_handshake_failure`); another TLS error may
# come after sending, so it counts as sent (the safe side).
_FAILURES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], bool | None, bool], ...] = (
    (ProxyError, None, False),                    # the proxy's fault: raised as it is
    (NewConnectionError, False, False),           # refused, unreachable (a ConnectTimeoutError)
    ((ConnectTimeout, ConnectTimeoutError), False, True),
    ((Timeout, ReadTimeoutError), True, True),    # no response head (or body) in time
    (BACKEND_FAILURES, True, False),              # reset, cut short, TLS, a bad answer
)


def failure(exc: RequestException, latency: float) -> Outcome:
    """The outcome of an attempt that raised ``exc``: the first row of :data:`_FAILURES`
    that names its class or the urllib3 error it wraps; a row without an outcome (the
    proxy's fault) raises ``exc`` again."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    handshake = None if isinstance(exc, ProxyError) else _handshake_failure(exc)
    if handshake is not None:
        return Outcome(ok=False, latency=latency, sent=False, timeout=False,
                       error=tls_failure_text(handshake))
    for kinds, sent, timeout in _FAILURES:
        if isinstance(exc, kinds) or isinstance(reason, kinds):
            if sent is None:
                raise exc
            return Outcome(ok=False, latency=latency, sent=sent, timeout=timeout,
                           error=describe(exc, sent, timeout))
    raise exc                                      # (the last row takes them all)


def _handshake_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error that failed the handshake with the backend, if that is what ``exc``
    is: a certificate (or its name) not verified, or the server's alert refusing the
    handshake (under TLS 1.3 a refused client certificate is said after the client's side
    ended, on the first read: :func:`~lbmiddleware.upstream.tls.handshake_verdict`). The
    request never reached the backend's application: a connect failure, as the proxies'
    upstream client counts it."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError) or handshake_verdict(cause):
            return cause
    return None


# "(read timeout=2)", "(connect timeout=0.5)": urllib3's words for the limit that ran out.
_LIMIT = re.compile(r"timeout=([0-9.]+)")


def describe(exc: BaseException, sent: bool, timeout: bool) -> str:
    """A failure in a few words for the failed attempt's log line ("connection refused",
    "read timed out after 2s", "connection reset by peer", "the response ended early (3
    bytes read, 97 more expected)") instead of requests' nested reprs."""
    if timeout:
        limit = _LIMIT.search(str(exc))
        return (f"{'read' if sent else 'connect'} timed out"
                + (f" after {format_duration(float(limit.group(1)))}" if limit else ""))
    for cause in _causes(exc):
        if isinstance(cause, http.client.IncompleteRead):
            partial: object = cause.partial     # bytes (http.client) or a count (urllib3)
            read = partial if isinstance(partial, int) else len(cause.partial)
            return (f"the response ended early ({read} bytes read"
                    + (f", {cause.expected} more expected)" if cause.expected else ")"))
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the connection was closed without a response"
        if isinstance(cause, http.client.BadStatusLine):
            return f"not an HTTP response (status line {str(cause).strip()[:40]!r})"
        if isinstance(cause, ssl.SSLError):
            return tls_failure_text(cause)          # (the proxies' words)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc)[:200] or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (requests puts urllib3's error in ``args``, urllib3 its
    cause in ``reason`` and ``__cause__``), nearest first, each once."""
    seen: set[int] = set()
    queue = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        queue += [arg for arg in current.args if isinstance(arg, BaseException)]
        queue += [e for e in (reason, current.__cause__, current.__context__)
                  if isinstance(e, BaseException)]


# -- the exception the caller gets ------------------------------------------------------------

def naming_backends(exc: RequestException, request: PreparedRequest,
                    tried: Sequence[Backend], deadline: str | None = None) -> RequestException:
    """``exc`` for the caller: the same kind and arguments (``args[0]`` stays the urllib3
    error requests put there), the caller's ``request``, and the backends tried in
    ``backends_tried`` and in its message; ``deadline``: the words of the request's
    deadline when it was what ran out (in ``deadline`` and before the message)."""
    try:
        named = _naming_class(type(exc))(  # type: ignore[arg-type]  # (mypy issue 11470)
            *exc.args, request=request, response=exc.response)
    except Exception:        # an exception type with another signature: keep it as it is
        return exc
    named.backends_tried = tuple(b.url for b in tried)
    named.deadline = deadline
    return named


if TYPE_CHECKING:
    # The mixin below is only ever combined with a requests exception (_naming_class).
    _RequestException = RequestException
else:
    _RequestException = object


class _NamesBackends(_RequestException):
    """Mixin of the exceptions the adapter raises: names the backends tried in ``str()``,
    and first the request's deadline when it ran out."""

    backends_tried: tuple[str, ...] = ()
    deadline: str | None = None

    def __str__(self) -> str:
        text = f"{super().__str__()} (backends tried: {', '.join(self.backends_tried)})"
        return text if self.deadline is None else f"{self.deadline}: {text}"

    def __reduce__(self) -> tuple[Callable[..., RequestException], tuple[Any, ...]]:
        # the class is made at run time: pickle its base (the requests exception)
        return _renamed, (type(self).__mro__[2], self.args, self.__dict__)


@functools.cache
def _naming_class(base: type[RequestException]) -> type[_NamesBackends]:
    """A subclass of the requests exception ``base`` whose message names the backends."""
    return type(base.__name__, (_NamesBackends, base),
                {"__module__": base.__module__, "__qualname__": base.__qualname__})


def _renamed(base: type[RequestException], args: tuple[Any, ...],
             state: dict[str, Any]) -> RequestException:
    exc = _naming_class(base)(*args)  # type: ignore[arg-type]  # (mypy issue 11470)
    exc.__dict__.update(state)
    return exc
