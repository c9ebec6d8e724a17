"""The upstream client's errors: one hierarchy that says what a retry rule needs to know.

``sent``: may the request have reached the backend? (``False``: a connect failure, safe
to retry for any method.) ``timeout``: was it a timeout (a 504 rather than a 502)?
``deadline``: the timeout that ran out was the caller's ``head_timeout`` (a request's
deadline across its attempts), not the pool's own connect or read timeout. ``bytes_sent``:
the request body bytes written before the failure.

:func:`connect_error` is the one table from a failed connect (``asyncio.TimeoutError``,
``ssl.SSLError``, ``OSError``) to these classes, for both upstream clients (httpx's
``_transports`` translate their library's errors at the edge the same way).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import TYPE_CHECKING, Protocol

from ..core.casts import format_duration
from .tls import tls_failure_text

if TYPE_CHECKING:
    from ..core.backend import Backend

__all__ = [
    "UpstreamError", "ConnectError", "ConnectTimeout", "TLSError", "ReadTimeout",
    "ProtocolError", "StaleConnection", "CONNECT_FAILURES", "connect_error",
    "failure_text", "Timeouts",
]


class UpstreamError(Exception):
    """An attempt failed. ``sent``: the request may have reached the backend."""

    sent = True
    timeout = False
    deadline = False        # set on an instance: the caller's head_timeout ran out
    bytes_sent = 0          # set on an instance: request body bytes written before it


class ConnectError(UpstreamError):
    """The connection could not be opened: nothing was sent."""

    sent = False


class ConnectTimeout(ConnectError):
    """Opening the connection took longer than ``connect_timeout``."""

    timeout = True


class TLSError(ConnectError):
    """The TLS handshake failed: a certificate refused by either side (the backend's not
    verified, ours not accepted), or no protocol in common. The request never reached the
    backend's application, whatever bytes were written (under TLS 1.3 the backend's verdict
    on a client certificate comes after the client has sent its request: it is still a
    failed handshake). Its text names the problem (``TLS: certificate verify failed: ...``)."""


class ReadTimeout(UpstreamError):
    """No response head (or no next body bytes) within ``read_timeout``."""

    timeout = True


class ProtocolError(UpstreamError):
    """The connection closed or broke, or the backend sent something that is not HTTP/1.x."""


class StaleConnection(ProtocolError):
    """A reused keep-alive connection closed before any response byte arrived: the pool
    may send the request again on a fresh connection (the backend never saw it)."""


#: What opening a connection raises that :func:`connect_error` translates (a timeout, then
#: every ``OSError``: refused, unreachable, a name not resolved, a failed TLS handshake).
CONNECT_FAILURES = (asyncio.TimeoutError, OSError)


def connect_error(exc: BaseException, backend: Backend, *, cut: bool = False) -> ConnectError:
    """``exc``, raised while connecting to ``backend``, as the upstream error that says so.

    ===========================  ===================  =====================================
    raised                       becomes              words
    ===========================  ===================  =====================================
    ``asyncio.TimeoutError``     ConnectTimeout       ``connecting to URL timed out``
    ``ssl.SSLError``             TLSError             :func:`~.tls.tls_failure_text`'s
    ``OSError``                  ConnectError         ``cannot connect to URL: strerror``
    ===========================  ===================  =====================================

    In that order (a timeout is an ``OSError`` since Python 3.11, an ``SSLError`` always).
    ``cut``: the wait was cut short by the caller's deadline (``head_timeout``): the
    timeout's ``deadline`` is set. Another type gets the last row (its ``str`` as words).

    The ``OSError`` is kept as the error's ``__context__`` (its errno gives the log's words:
    ``failure_text``); the ``SSLError`` as its ``__cause__`` only, its errno being no system
    error's: raise the result outside the ``except`` block that caught ``exc`` (inside it,
    Python would set ``exc`` as the context again). The context is kept from the traceback's
    display: the words already name it.
    """
    error: ConnectError
    if isinstance(exc, asyncio.TimeoutError):
        error = ConnectTimeout(f"connecting to {backend.url} timed out")
        error.deadline = cut
        return error
    if isinstance(exc, ssl.SSLError):
        error = TLSError(tls_failure_text(exc))
        error.__cause__ = exc
        return error
    words = (exc.strerror if isinstance(exc, OSError) else None) or exc
    error = ConnectError(f"cannot connect to {backend.url}: {words}")
    error.__context__ = exc
    error.__suppress_context__ = True
    return error


class Timeouts(Protocol):
    """What :func:`failure_text` reads of an upstream pool (a :class:`~.pool.HostPool`, the
    fast server's backend pool): the timeouts its words name."""

    @property
    def connect_timeout(self) -> float: ...

    @property
    def read_timeout(self) -> float: ...


def failure_text(exc: UpstreamError, pool: Timeouts) -> str:
    """What failed an attempt without a response, in the log's words: ``connection
    refused``, ``connect timed out after 5s``, ``read timed out after 2s``, or the
    upstream client's own (``the backend closed the connection``)."""
    if isinstance(exc, ConnectTimeout):
        return f"connect timed out after {format_duration(pool.connect_timeout)}"
    if isinstance(exc, ReadTimeout):
        return f"read timed out after {format_duration(pool.read_timeout)}"
    if isinstance(exc, ConnectError):
        # the OSError it was raised from (its context: raised "from None", kept all the
        # same), by its errno: asyncio's own text names the address ("Connect call failed")
        # (a name not resolved: getaddrinfo's own text, its errno being no system error)
        cause = exc.__context__
        if isinstance(cause, OSError):
            text = (os.strerror(cause.errno) if cause.errno is not None and cause.errno > 0
                    else cause.strerror)
            if text:
                return text[:1].lower() + text[1:]
    return str(exc)
