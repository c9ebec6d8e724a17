"""The access log: one line per proxied request, on the ``lbmiddleware.access`` logger (INFO),
when a proxy front-end's ``access_log`` setting is on (``LB_ACCESS_LOG``); one line (here
in two)::

    client=127.0.0.1 method=GET path=/api/x status=200
    backend=http://127.0.0.1:8001 attempts=1 duration_ms=1.8

The format is logfmt (``key=value`` pairs apart by spaces), which Loki, Grafana, Vector and
``grep`` read as it is. Every front-end writes its line with :func:`access_line`, so the
ASGI and WSGI middlewares and the gateway log alike:

* ``client``: the client's address as the proxy rules determine it (``X-Forwarded-For``
  believed from a trusted proxy only), ``-`` when the server gives none;
* ``path``: the path the client asked for, decoded, without the query (queries carry
  tokens and personal data more often than paths do);
* ``status``: the status the client got, the proxy's own 502, 503 or 504 included; 499
  (nginx's "client closed request") when the client left before a response began;
* ``backend``: the last backend tried, ``-`` when none was (a 503 with no backend usable,
  a request refused before forwarding); ``attempts``: how many were tried;
* ``duration_ms``: from the request's arrival at the proxy to the end of its response.

A value is written bare when it can be (printable, no space, quote, ``=`` or backslash),
else in double quotes with JSON's escapes (``\\"``, ``\\\\``, ``\\n``, ``\\u0000``): a
client's path can hold any of them, and one request must stay one parseable line.
"""

from __future__ import annotations

import logging
import re

__all__ = ["access_line", "logfmt_value", "logger", "CLIENT_CLOSED"]

#: The logger of the access lines: off until a handler and level INFO are configured (the
#: gateway does; a library user configures ``logging`` as usual).
logger = logging.getLogger("lbmiddleware.access")

#: The status logged for a client that left before any response began (nginx's 499).
CLIENT_CLOSED = 499

_NEEDS_QUOTES = re.compile(r'[ ="\\]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def access_line(client: str | None, method: str, path: str, status: int | None,
                backend: str | None, attempts: int, duration: float) -> str:
    """The access log line of one request (``duration`` in seconds; ``None`` and missing
    values are written ``-``)."""
    return (f"client={_value(client)} method={_value(method)} path={_value(path)} "
            f"status={'-' if status is None else status} backend={_value(backend)} "
            f"attempts={attempts} duration_ms={duration * 1000:.1f}")


def _value(value: str | None) -> str:
    return "-" if value is None else logfmt_value(value)


def logfmt_value(value: str) -> str:
    """``value`` as logfmt writes it: bare when it can be, else quoted and escaped."""
    if value and value.isprintable() and _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + "".join(_escaped(char) for char in value) + '"'


def _escaped(char: str) -> str:
    escape = _ESCAPES.get(char)
    if escape is not None:
        return escape
    if char.isprintable():
        return char
    # JSON's \u escapes: a character beyond the BMP as its two UTF-16 code units
    units = char.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
