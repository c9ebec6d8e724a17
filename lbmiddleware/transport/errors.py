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

import ast
import os
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import httpx

from ..core.attempts import Outcome
from ..core.casts import format_duration
from ..errors import NoHealthyBackend
from ..upstream.tls import handshake_verdict, tls_failure_text

if TYPE_CHECKING:
    from ..core.backend import Backend

__all__ = ["NoHealthyBackendError", "Timeouts", "closed_error", "describe", "failure",
           "limit_name", "naming_backends", "from_tls_error"]

#: An httpx timeout as a request carries it (``extensions["timeout"]``).
Timeouts = Mapping[str, float | None]


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
# be retried. LocalProtocolError and UnsupportedProtocol are a request httpx would not send.
# A PoolTimeout (no free connection in the backend's own pool in time: ``limits=`` is per
# backend) is not the backend's failure either: its row gives its words, and the transports
# release that attempt and raise it (see LoadBalancingTransport).
_FAILURES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], bool | None, bool], ...] = (
    ((httpx.ProxyError, httpx.LocalProtocolError, httpx.UnsupportedProtocol), None, False),
    ((httpx.ConnectTimeout, httpx.PoolTimeout), False, True),
    (httpx.ConnectError, False, False),             # refused, unreachable, TLS handshake
    (httpx.TimeoutException, True, True),           # read or write timed out
    (httpx.TransportError, True, False),            # reset, closed before the head, ...
)


def failure(exc: httpx.TransportError, latency: float,
            timeouts: Timeouts | None = None) -> Outcome:
    """The outcome of an attempt that raised ``exc`` (``timeouts``: the attempt's, for the
    words), its text in ``error``; a row without an outcome (not the backend's fault)
    raises ``exc`` again. A full pool's wait is no time of the backend's: not timed."""
    for kinds, sent, timeout in _FAILURES:
        if isinstance(exc, kinds):
            if sent is None:
                raise exc
            if sent and _refused_handshake(exc):
                sent = False
            return Outcome(ok=False, sent=sent, timeout=timeout,
                           latency=None if isinstance(exc, httpx.PoolTimeout) else latency,
                           error=describe(exc, timeouts))
    raise exc                                       # (the last row takes them all)


def _refused_handshake(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend's TLS alert refusing the handshake, which TLS 1.3 says
    after the client's side ended, on the first read (a client certificate refused): the
    request never reached the backend's application, a connect failure as the proxies'
    upstream client counts it (:func:`~lbmiddleware.upstream.tls.handshake_verdict`)."""
    return any(handshake_verdict(cause) for cause in _causes(exc))


def from_tls_error(exc: ssl.SSLError, request: httpx.Request) -> httpx.TransportError:
    """httpx's error for a TLS error an inner transport let through as it came (httpcore's
    async network backend maps no ``ssl.SSLError`` met while reading: a refused client
    certificate, under TLS 1.3): a ``ConnectError`` for the backend's verdict on the
    handshake, else a ``ReadError``, as the sync transport raises them."""
    kind = httpx.ConnectError if handshake_verdict(exc) else httpx.ReadError
    error = kind(str(exc), request=request)
    error.__cause__ = exc
    return error


# -- a failure in words -----------------------------------------------------------------------

#: Each timeout, the limit that ran out and its words.
_TIMEOUTS = ((httpx.ConnectTimeout, "connect", "connect timed out"),
             (httpx.ReadTimeout, "read", "read timed out"),
             (httpx.WriteTimeout, "write", "write timed out"))


def limit_name(exc: BaseException) -> str | None:
    """The name of the limit (httpx's ``Timeout``: connect, read, write, pool) whose timeout
    ``exc`` is; None when it is no timeout."""
    if isinstance(exc, httpx.PoolTimeout):
        return "pool"
    for kind, name, _ in _TIMEOUTS:
        if isinstance(exc, kind):
            return name
    return None

# h11's words for a body cut short: "peer closed connection without sending complete message
# body (received 3 bytes, expected 100)" or "(incomplete chunked read)"; and for a head that
# is not HTTP: "illegal status line: bytearray(b'garbage')".
_CUT_SHORT = "peer closed connection without sending complete message body"
_RECEIVED = re.compile(r"received (\d+) bytes, expected (\d+)")
_SYSTEM_ERROR = re.compile(r"\[Errno -?\d+\] (.+)$")
_STATUS_LINE = re.compile(r"illegal status line: bytearray\((b'.*'|b\".*\")\)$")


def describe(exc: BaseException, timeouts: Timeouts | None = None) -> str:
    """A failure in the words every front-end uses for it ("connection refused", "read timed
    out after 2s", "the connection was closed without a response", "the response ended
    early (3 bytes read, 97 more expected)"), instead of httpx's and the system's own
    ("[Errno 111] Connection refused", a bare "timed out"); ``timeouts``: the attempt's, to
    name the limit that ran out (:func:`~lbmiddleware.core.casts.format_duration`)."""
    if isinstance(exc, httpx.PoolTimeout):
        return (f"no free connection{_limit(timeouts, 'pool', ' within ')} (the backend's "
                "connection pool is full)")
    for kind, name, words in _TIMEOUTS:
        if isinstance(exc, kind):
            return words + _limit(timeouts, name, " after ")
    text = str(exc)
    if text.startswith("Server disconnected without sending a response"):
        return "the connection was closed without a response"
    if text.startswith(_CUT_SHORT):
        received = _RECEIVED.search(text)
        detail = (f"{received[1]} bytes read, {int(received[2]) - int(received[1])} more "
                  "expected") if received else text[len(_CUT_SHORT):].strip(" ()")
        return f"the response ended early ({detail})" if detail else "the response ended early"
    status_line = _STATUS_LINE.match(text)
    if status_line:
        line = ast.literal_eval(status_line[1]).decode("latin-1")
        return f"not an HTTP response (status line {line.strip()[:40]!r})"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return tls_failure_text(cause)          # (the proxies' words)
        if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
            words = os.strerror(cause.errno)
            return words[:1].lower() + words[1:]
    system = _SYSTEM_ERROR.match(text)         # the system's error, its cause not kept
    if system:
        return system[1][:1].lower() + system[1][1:]
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return text[:200] or type(exc).__name__


def _limit(timeouts: Timeouts | None, name: str, before: str) -> str:
    """`` after 2s``: the limit ``name`` of ``timeouts`` in words, "" when there is none."""
    limit = None if timeouts is None else timeouts.get(name)
    return "" if limit is None else before + format_duration(limit)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from (httpx's error from httpcore's, from the
    system's), nearest first, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def naming_backends(exc: httpx.TransportError, request: httpx.Request,
                    tried: Sequence[Backend], words: str | None = None,
                    deadline: str | None = None) -> httpx.TransportError:
    """``exc`` for the caller: the same class, its message (``words``, the failure's, when
    it has none: a PoolTimeout's) followed by the backends tried (also in
    ``backends_tried``), for the caller's ``request``; ``deadline``: the words of the
    request's deadline when it was what ran out (first in the message, and in
    ``deadline``). An exception class that cannot be made from a message alone is returned
    as it is, with ``backends_tried`` and ``deadline``."""
    urls = tuple(b.url for b in tried)
    if deadline is None:
        text = str(exc) or words or type(exc).__name__
    else:               # (then ``words`` are the deadline's: the failure's own follow)
        text = f"{deadline}: {str(exc) or describe(exc)}"
    try:
        named = type(exc)(f"{text} (backends tried: {', '.join(urls)})", request=request)
    except Exception:           # a subclass with another signature: keep it as it is
        named = exc
    named.backends_tried = urls  # type: ignore[attr-defined]
    named.deadline = deadline  # type: ignore[attr-defined]
    return named
