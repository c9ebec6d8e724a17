"""Redirects that stay on the proxy: a backend's ``Location``, ``Content-Location`` and
``Refresh`` that point at the backend itself are rewritten to the address the client used.

A backend that builds absolute URLs from the ``Host`` it got (Starlette's ``url_for`` and
slash redirects, Django's ``build_absolute_uri``, a ``201 Created``'s new resource) gets the
backend's own authority from the proxy (``Host`` upstream is the backend's, as nginx's
``$proxy_host``), and answers ``Location: http://127.0.0.1:8001/api/new``. Passed on as it
is, that sends the client past the balancer to one backend, which it may not even reach. As
nginx's ``proxy_redirect default`` does, a reference to the backend that answered (its
scheme, its address or server name, its port, and under its base path) becomes the origin the
client used plus the route's path: ``http://front.example/api/new``, the prefix put back when
``strip_prefix`` removed it on the way up. Relative references, other hosts, other ports and
other schemes are left alone; so is a path outside the backend's base path.

The origin the client used is the request's scheme and ``Host``, or from a trusted proxy its
``X-Forwarded-Proto`` and ``X-Forwarded-Host``: exactly what the header rules
(:mod:`.headers`) send upstream as ``X-Forwarded-Proto`` / ``X-Forwarded-Host``, so it is read
back from the upstream headers (:func:`forwarded_origin`), one trust rule for both. A list
(``a.example, b.example``) gives its last entry: the word of the nearest proxy, the one
trusted (werkzeug's ``ProxyFix`` and hypercorn's with one hop); the scheme is read as the
sticky cookie's ``Secure`` reads it (:func:`~.client.client_scheme`). An origin that is not a
plain ``http``/``https`` scheme and host (``evil.example/path``, ``user@host``, non-ASCII)
rewrites nothing.

The client front-ends (the requests adapter, the httpx transports) use the same rule with
their virtual origin (``http://orders``) and no prefix, so a redirect to a backend is followed
through the pool. Standard library only.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, AnyStr

from ..core.backend import DEFAULT_PORTS, Backend
from .client import proto_scheme

__all__ = ["REDIRECT_HEADERS", "RedirectRule", "backend_reference", "public_origin",
           "forwarded_origin", "url_origin", "mapped_redirects", "Rewrite"]

#: The response headers whose URL is rewritten (lower case).
REDIRECT_HEADERS = frozenset({"location", "content-location", "refresh"})

#: A bound rule (:meth:`RedirectRule.bind`): ``(lower-case name, value)`` -> the new value,
#: or None to leave the header as it is. The header rules ask it only about values that hold
#: ``//``: a relative reference (no ``//``) is never rewritten.
Rewrite = Callable[[str, str], "str | None"]

# Refresh: a delay, ';' or ',', an optional 'url=', the URL (optionally quoted): the HTML
# standard's reading of the header (and of <meta http-equiv=refresh>).
_REFRESH = re.compile(r"""(\s*[0-9.]*\s*[;,]\s*(?:url\s*=\s*)?)(["']?)(.*?)\2(\s*)\Z""",
                      re.IGNORECASE | re.DOTALL)
# A host as it may appear in an origin: a name or IPv4 address, or an IPv6 one in brackets,
# with an optional port (RFC 3986 reg-name characters; no '/', '@', space or non-ASCII).
_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?",
                        re.ASCII)


def backend_reference(url: str, backend: Backend, public_scheme: str | None = None
                      ) -> str | None:
    """What follows ``backend``'s origin and base path in ``url`` (``/new?x#y``; ``""`` for
    the base itself) when ``url`` is an absolute reference to ``backend`` (its scheme, its
    address or server name, its port) under its base path, or a network-path one
    (``//host:port/...``); else None. ``public_scheme``, the scheme the client used, is the
    backend's too when the port is the backend's: a backend that believes the
    ``X-Forwarded-Proto`` it got (uvicorn does, from 127.0.0.1) builds
    ``https://its-address:its-port/...``."""
    if "//" not in url:             # relative (the usual redirect): nothing to parse
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower() or backend.scheme
    if scheme != backend.scheme and scheme != public_scheme:
        return None
    host = parts.hostname
    if host is None or not parts.netloc:
        return None
    if (DEFAULT_PORTS.get(scheme) if port is None else port) != backend.port:
        return None
    if host != backend.host and host != backend.server_name:
        return None
    path, base = _without_dot_segments(parts.path), backend.path
    if base:
        if path != base and not path.startswith(base + "/"):
            return None
        path = path[len(base):]
    return urllib.parse.urlunsplit(("", "", path, parts.query, parts.fragment))


def _without_dot_segments(path: str) -> str:
    """``path`` with its ``.`` and ``..`` segments resolved (RFC 3986 5.2.4; ``%2e`` is a
    dot, as browsers read it), as the client will: ``/base/../admin`` is ``/admin``, not
    under the base path ``/base``, so not the backend's to have rewritten."""
    if "." not in path and "%2" not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        dots = segment.lower().replace("%2e", ".")
        last = index == len(segments) - 1
        if dots in (".", ".."):
            if dots == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")          # "/a/.." is "/", "/a/." is "/a/"
            continue
        out.append(segment)
    return "/".join(out) if out != [""] else "/"


def public_origin(proto: str | None, host: str | None) -> str | None:
    """``scheme://host`` from a scheme and a ``Host`` (each possibly a proxy's list: the
    last entry counts; ``ws``/``wss`` read as ``http``/``https``: :func:`~.client.
    proto_scheme`), or None when either is missing or not a plain origin's."""
    if not proto or not host:
        return None
    scheme = proto_scheme(proto)        # (the client's scheme as the sticky cookie reads it)
    authority = host.rpartition(",")[2].strip()
    if scheme is None or not _AUTHORITY.fullmatch(authority):
        return None
    return f"{scheme}://{authority}"


def url_origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute ``url`` as the client wrote it (credentials
    left out): the virtual origin of a client front-end's request."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    return public_origin(parts.scheme, parts.netloc.rpartition("@")[2])


def forwarded_origin(headers: Sequence[tuple[AnyStr, AnyStr]]) -> str | None:
    """The origin the client used, from the ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
    the header rules set on the upstream request (``str`` or ``bytes`` pairs); None without
    a ``Host``."""
    proto = host = None
    for name, value in reversed(headers):          # (the rules append them last)
        lower = _text(name).lower()
        if lower == "x-forwarded-proto" and proto is None:
            proto = _text(value)
        elif lower == "x-forwarded-host" and host is None:
            host = _text(value)
        if proto is not None and host is not None:
            break
    return public_origin(proto, host)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class RedirectRule:
    """The rewrite for one route: the origin the client used, then ``prefix`` when
    ``strip_prefix`` removed it from the path sent upstream, then what followed the
    backend's base path. The client front-ends use it without a prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "/", strip_prefix: bool = False) -> None:
        #: What goes between the origin and the backend's path ("" when nothing does).
        self.prefix = prefix.rstrip("/") if strip_prefix else ""

    def rewrite(self, name: str, value: str, backend: Backend, origin: str) -> str | None:
        """The new value of the header ``name`` (lower case) when it points at ``backend``:
        ``Location`` and ``Content-Location`` are a URL, ``Refresh`` a delay and a URL;
        None to leave it as it is (another header, or another place)."""
        return self._rewrite(name, value, backend, lambda: origin)

    def bind(self, backend: Backend,
             origin: Sequence[tuple[AnyStr, AnyStr]] | Callable[[], str | None]) -> Rewrite:
        """The rule for one response of ``backend``: ``origin`` is the request's upstream
        headers (the proxies': :func:`forwarded_origin` reads the client's origin from
        them) or a function giving it (the client front-ends' virtual origin); it is asked
        only once a header points at the backend (most responses have none)."""
        return _Bound(self, backend, origin)

    def _rewrite(self, name: str, value: str, backend: Backend,
                 origin: Callable[[], str | None]) -> str | None:
        if name == "refresh":
            match = _REFRESH.match(value)
            if match is None:
                return None
            head, quote, url, tail = match.groups()
        elif name in REDIRECT_HEADERS:
            head = quote = tail = ""
            url = value
        else:
            return None
        if "//" not in url:         # relative (the usual redirect): left as it is
            return None
        public = origin()
        if public is None:
            return None
        rest = backend_reference(url, backend, public.partition(":")[0])
        if rest is None:
            return None
        if not self.prefix and not rest.startswith("/"):
            rest = "/" + rest
        return f"{head}{quote}{public}{self.prefix}{rest}{quote}{tail}"


def mapped_redirects(headers: Iterable[tuple[str, str]], rewrite: Rewrite
                     ) -> list[tuple[str, str]] | None:
    """``headers`` (name, value pairs) with ``rewrite`` (a bound rule) applied to each
    :data:`REDIRECT_HEADERS` one, or None when it changed none (for front-ends whose
    libraries keep headers in their own objects: requests', httpx's)."""
    out: list[tuple[str, str]] = []
    changed = False
    for name, value in headers:
        lower = name.lower()
        if lower in REDIRECT_HEADERS:
            new = rewrite(lower, value)
            if new is not None:
                value = new
                changed = True
        out.append((name, value))
    return out if changed else None


class _Bound:
    """A :class:`RedirectRule` bound to one response (:meth:`RedirectRule.bind`): one
    object per response, the origin read at most once."""

    __slots__ = ("rule", "backend", "source", "origin", "read")

    def __init__(self, rule: RedirectRule, backend: Backend,
                 source: Sequence[tuple[Any, Any]] | Callable[[], str | None]) -> None:
        self.rule, self.backend, self.source = rule, backend, source
        self.origin: str | None = None
        self.read = False

    def __call__(self, name: str, value: str) -> str | None:
        return self.rule._rewrite(name, value, self.backend, self._origin)

    def _origin(self) -> str | None:
        if not self.read:
            source = self.source
            self.origin = source() if callable(source) else forwarded_origin(source)
            self.read = True
        return self.origin
