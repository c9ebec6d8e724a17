"""The request head a proxy sends upstream: one rule for both upstream clients.

The coroutine client (:meth:`HostPool.request <.pool.HostPool.request>`) and the fast
server's callback client (:mod:`lbmiddleware.gateway.fast.exchange`) write the same bytes for
the same request, so a backend cannot tell which front-end forwarded it. The rule: the request
line, ``Host`` first when the proxy adds it, the headers as given (names spelt as given), the
framing, the blank line. The framing follows RFC 9112 6.1-6.3: ``Transfer-Encoding: chunked``
for a body of unknown length, ``Content-Length`` for a known one; an empty body gets
``Content-Length: 0`` only for the methods that carry one (POST, PUT, PATCH), as RFC 9110 8.6
asks of a user agent: "a user agent normally sends Content-Length in a POST request even when
the value is 0 (indicating empty content)".

Built with joins alone, no Python-level loop: the cheapest way measured for the fast path
(b13a0c2: two ``%`` formats and a list comprehension's joins, 0.75 us for a GET's head, against
0.95 for a list of parts; the fields joined through ``map``, without the comprehension's frame,
and the request line by a join: 7,850 -> 6,880 instructions for a GET with three headers).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["request_head", "FRAMED_METHODS"]

#: The methods whose empty body is still framed (``Content-Length: 0``): a set, one hash
#: lookup for a GET (a tuple compares it with each).
FRAMED_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))

# One header's line (without its CRLF) from its (name, value) pair.
_FIELD = b": ".join


def request_head(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                 host: bytes | None, length: int | None) -> bytes:
    """The request head sent upstream: the request line, ``Host: host`` first when given,
    ``headers``, the framing (``Transfer-Encoding: chunked`` for a body of unknown
    ``length``, else ``Content-Length`` when there is a body or the method is one that
    carries one: POST, PUT, PATCH), the blank line."""
    if length is None:
        framing = b"Transfer-Encoding: chunked\r\n\r\n"
    elif length or method in FRAMED_METHODS:
        framing = b"Content-Length: %d\r\n\r\n" % length
    else:
        framing = b"\r\n"
    lines = b"\r\n".join([*map(_FIELD, headers), framing])
    if host is None:
        return b"".join((method, b" ", target, b" HTTP/1.1\r\n", lines))
    return b"".join((method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n", lines))
