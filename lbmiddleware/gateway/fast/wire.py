"""What the fast server writes itself: a response head (:func:`response_head`), the proxy's
own errors as whole responses (:func:`error_bytes`), and the ``Date`` header line
(:class:`DateHeader`, formatted once a second).

Every response says the server's own ``Date`` and ``Server`` (:data:`SERVER`), once: the
proxy drops the backend's, as nginx hides them (docs/contract.md: the server in front
sends its own). Header names the server adds are lower-case, as uvicorn writes its own
(HTTP/1.1 field names are case-insensitive: RFC 9110 5.1); the names and values it is
given are written as they are, the proxy's rules having checked them (``proxy.headers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from email.utils import formatdate

from ...proxy import error_response

__all__ = ["DateHeader", "response_head", "error_bytes", "CONTINUE", "SERVER"]

#: The interim response to ``Expect: 100-continue`` (RFC 9110 10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: The ``Server`` header's value: the name alone (no version to fingerprint, as nginx's
#: ``server_tokens off``).
SERVER = b"lbmiddleware"

_SERVER_LINE = b"server: " + SERVER + b"\r\n"
_CLOSE_END = b"connection: close\r\n\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"


class DateHeader:
    """The ``Date`` header line (RFC 9110 6.6.1: a server with a clock sends one),
    ``b"date: Mon, 07 Dec 2026 15:20:00 GMT\\r\\n"``, formatted again when the second
    changes: a clock read per response, a format per second. ``clock``: seconds since the
    epoch (``time.time``; tests pass their own)."""

    __slots__ = ("_clock", "_since", "_until", "_line")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._since = self._until = 0.0     # the second the line says: [since, until)
        self._line = b""

    def value(self) -> bytes:
        """The whole header line, CRLF included."""
        now = self._clock()
        if now >= self._until or now < self._since:     # (a clock set back, too)
            second = int(now)
            self._since, self._until = float(second), second + 1.0
            self._line = b"date: " + formatdate(second, usegmt=True).encode("ascii") + b"\r\n"
        return self._line


def response_head(status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]],
                  date: bytes, length: int | None, chunked: bool, close: bool) -> bytes:
    """A response head: ``HTTP/1.1 <status> <reason>``, ``headers`` as given, ``date`` (a
    :meth:`DateHeader.value` line) and ``server: lbmiddleware``, the framing
    (``content-length: <length>``, else ``transfer-encoding: chunked`` when ``chunked``,
    else none: a status without a body, or a body that ends with the connection for an
    HTTP/1.0 client), ``connection: close`` when ``close``, and the empty line. The framing
    is the caller's: a ``Content-Length`` among ``headers`` (the backend's, as the rules
    passed it; then ``length`` is None and ``chunked`` False), or ``length``/``chunked``;
    ``headers`` must not hold ``Transfer-Encoding``, ``Connection``, ``Date`` or
    ``Server``. (Not keyword-only: the exchange passes them by position, once per
    response.)"""
    # (parts joined once, the status line formatted once per status and reason: a third
    # of the instructions of a head added up piece by piece)
    line = _STATUS_LINES.get(status)
    if line is None or line[0] != reason:
        line = (reason, b"HTTP/1.1 %d %s\r\n" % (status, reason))
        if len(_STATUS_LINES) < 128:
            _STATUS_LINES[status] = line
    parts = [line[1]]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (date, _SERVER_LINE,
              b"content-length: %d\r\n" % length if length is not None
              else _CHUNKED if chunked else b"",
              _CLOSE_END if close else b"\r\n")
    return b"".join(parts)


# status -> (the reason last written with it, the status line it made)
_STATUS_LINES: dict[int, tuple[bytes, bytes]] = {}


# (status, close, head_only) -> the response's bytes before and after its date line
_ERRORS: dict[tuple[int, bool, bool], tuple[bytes, bytes]] = {}


def error_bytes(status: int, *, date: bytes, close: bool, head_only: bool = False,
                detail: str | None = None) -> bytes:
    """The proxy's own error response for ``status`` (:func:`lbmiddleware.proxy.
    error_response`: 400, 404, 501, 502, 503 with ``Retry-After``, 504) as the bytes of a
    whole HTTP/1.1 response: with ``date`` (a :meth:`DateHeader.value` line), ``connection:
    close`` when ``close``, without its body when ``head_only`` (an answer to HEAD: its
    ``Content-Length`` stays that of the body). ``detail``: the body's words after the
    colon, as ``error_response`` takes them."""
    key = (status, close, head_only)
    parts = _ERRORS.get(key) if detail is None else None
    if parts is None:
        error = error_response(status, detail)
        head = response_head(status, error.reason.encode("latin-1"),
                             [(name.encode("latin-1"), value.encode("latin-1"))
                              for name, value in error.headers],
                             date=b"\x00", length=None, chunked=False, close=close)
        before, _, after = head.partition(b"\x00")
        parts = (before, after if head_only else after + error.body)
        if detail is None:
            _ERRORS[key] = parts
    return parts[0] + date + parts[1]
