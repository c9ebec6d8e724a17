"""The request target sent upstream: the backend's base path, then the request's path and
query, and it stays a path whatever the client sent.

``//evil``, ``/http://evil`` and ``/\\evil`` reach the backend as paths and never name a
host; CR, LF and NUL raise :class:`~.refusals.UnsafeRequest`. :func:`upstream_url` builds
a full URL (for clients that take one, like requests) and checks that its host is the
backend's. The rules: ``docs/contract.md``, "Proxying" / "The upstream target".
"""

from __future__ import annotations

import re
import urllib.parse
from typing import AnyStr

from ..core.backend import Backend
from .refusals import UNSAFE_BYTES, UnsafeRequest

__all__ = ["join_target", "quote_path", "upstream_url"]

# Bytes that may not appear raw in a request target (controls, space, DEL, non-ASCII, '#');
# they are percent-encoded, everything else goes upstream exactly as the client sent it.
_TARGET_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff#]")
# A target that goes as it is (the usual one): a '/' then only bytes that need no escape
# (printable ASCII but '#'; CR, LF and NUL are not among them), the query's '?' included.
# Checked as "starts with '/' and strip() of these leaves nothing": a third of a regex
# match's instructions for a short path, and half for a long one.
_PLAIN = bytes(range(0x21, 0x7f)).replace(b"#", b"")
_PLAIN_TEXT = _PLAIN.decode("ascii")


def join_target(base_path: AnyStr, path: AnyStr, query: AnyStr | None = None) -> AnyStr:
    """The request target for the backend: its base path + the request's path and query.

    ``str`` or ``bytes`` (all three the same type). The path stays a path whatever it
    looks like: the result always starts with ``/``, is never an absolute URL, and
    bytes that may not appear raw in a request line (space, controls, non-ASCII, ``#``)
    are percent-encoded. CR, LF or NUL raise :class:`UnsafeRequest`.
    """
    # The usual target, in one check: base + path (+ '?' + query) as it came, when that
    # starts with '/' and has nothing to escape or refuse (the query's bytes are checked with
    # the path's: '?' is plain either way).
    if isinstance(path, bytes):
        plain = base_path + path + b"?" + query if query else base_path + path
        if plain and plain[0] == 47 and not plain.strip(_PLAIN):      # ("/": an int)
            return plain
    else:
        text = base_path + path + "?" + query if query else base_path + path
        if text[:1] == "/" and not text.strip(_PLAIN_TEXT):
            return text
    raw: bytes
    raw_query: bytes
    if isinstance(path, bytes):
        raw = base_path + path
        raw_query = query or b""
    else:
        raw = (base_path + path).encode("utf-8", "surrogateescape")
        raw_query = query.encode("utf-8", "surrogateescape") if query else b""
    if UNSAFE_BYTES.search(raw) or UNSAFE_BYTES.search(raw_query):
        raise UnsafeRequest("CR, LF or NUL in the request path or query")
    if not raw.startswith(b"/"):
        raw = b"/" + raw
    if _TARGET_ESCAPE.search(raw):
        raw = _TARGET_ESCAPE.sub(_percent, raw)
    if raw_query:
        if _TARGET_ESCAPE.search(raw_query):
            raw_query = _TARGET_ESCAPE.sub(_percent, raw_query)
        raw = raw + b"?" + raw_query
    if isinstance(path, bytes):
        return raw
    return raw.decode("ascii")


def quote_path(path: str | bytes) -> str:
    """Percent-encode a *decoded* path (ASGI ``scope["path"]``: pass ``str``, encoded as
    UTF-8; WSGI ``PATH_INFO``: pass ``environ["PATH_INFO"].encode("latin-1")``) so that it
    can go in a request target: ``%``, ``?``, ``#``, ``\\``, spaces and non-ASCII are encoded."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return urllib.parse.quote(raw, safe="/!$&'()*+,;=:@~-._")


def _percent(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group(0)[0]


def upstream_url(backend: Backend, target: str) -> str:
    """``scheme://host:port`` of ``backend`` + ``target`` (from :func:`join_target`).

    Raises :class:`UnsafeRequest` if the result would not name the backend's host: the
    host never comes from the request.
    """
    if not target.startswith("/"):
        raise UnsafeRequest(f"request target {target[:80]!r} is not a path")
    url = f"{backend.scheme}://{backend.netloc}{target}"
    parts = urllib.parse.urlsplit(url)
    if parts.netloc != backend.netloc or parts.scheme != backend.scheme:
        raise UnsafeRequest(f"request target {target[:80]!r} would change the upstream host")
    return url
