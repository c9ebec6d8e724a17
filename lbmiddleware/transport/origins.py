"""Which requests a transport balances, and the redirects that would take a client out of
its pool.

A transport balances one virtual origin (scheme, host and port: ``http://orders``):
``origin=``, else the origin of the first request it sees (the client's ``base_url``, the
URL it is mounted on). An ``httpx.Client`` hands its ``transport=`` every request it sends,
whatever the host: a redirect to a CDN, a call to another service. Those go where their
URL says, over a plain httpx transport with the same TLS and proxy options, as they would
without the pool; ``mounts={"http://orders": transport}`` has httpx choose by URL before
the transport is asked, the precise form.

A backend that builds absolute URLs from the ``Host`` it got (Starlette's slash redirects,
Django's ``build_absolute_uri``) gets the backend's own address from the transport, and
redirects to itself: ``Location: http://10.0.0.5:8080/base/new``. Followed as it is, the
client would leave the pool for that one backend. As nginx's ``proxy_redirect default``
does, such a ``Location`` (the backend's scheme, its address or server name and port, and
under its base path), ``Content-Location`` or ``Refresh`` is mapped to the virtual origin:
``http://orders/new``, by the rule every front-end follows
(:mod:`lbmiddleware.proxy.redirects`); :func:`has_redirects` tells, cheaply, whether a
response has any of those headers.
"""

from __future__ import annotations

from typing import NamedTuple

import httpx

from ..core.backend import DEFAULT_PORTS
from ..errors import ConfigError
from ..proxy.redirects import REDIRECT_HEADERS

__all__ = ["Origin", "origin_of", "origin_parts", "parts_of", "has_redirects"]

#: The names of :data:`~lbmiddleware.proxy.redirects.REDIRECT_HEADERS`, as httpx keeps them.
_REDIRECT_NAMES = frozenset(name.encode("ascii") for name in REDIRECT_HEADERS)


class Origin(NamedTuple):
    """A scheme, a host (lower case, IPv6 without brackets) and a port (the default one
    spelled out), as requests are compared with it."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "origin") -> Origin:
        """``text`` (``http://orders``, ``https://api.example:8443``) as an origin; a
        :class:`~lbmiddleware.ConfigError` naming it when it is not one."""
        try:
            url = httpx.URL(text)
        except Exception as exc:
            raise ConfigError(f"{what} has value {text!r}: not a URL ({exc})") from None
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ConfigError(f"{what} has value {text!r}: not an http:// or https:// origin "
                              "(a scheme and a host, e.g. 'http://orders')")
        if url.raw_path not in (b"", b"/") or url.fragment or url.userinfo:
            raise ConfigError(f"{what} has value {text!r}: an origin is a scheme, a host and "
                              "a port, without a path, query or credentials")
        return origin_of(url)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS.get(self.scheme) == self.port
        return f"{self.scheme}://{host}" if default else f"{self.scheme}://{host}:{self.port}"


def _origin_public(url: httpx.URL) -> Origin:
    scheme, port = url.scheme, url.port
    return Origin(scheme, url.host, DEFAULT_PORTS.get(scheme, 0) if port is None else port)


def _origin_parsed(url: httpx.URL) -> Origin:
    """:func:`_origin_public` from the parsed form (a tenth of the properties' time, once
    per request)."""
    parts = url._uri_reference
    scheme, port = parts.scheme, parts.port
    return tuple.__new__(Origin, (scheme, parts.host,
                                  DEFAULT_PORTS.get(scheme, 0) if port is None else port))


#: What :func:`origin_parts` gives: scheme, credentials, host, port (None: the default).
Parts = tuple[str, str, str, int | None]


def parts_of(origin: Origin) -> Parts:
    """What :func:`origin_parts` gives for a request to ``origin`` without credentials: a
    tuple compared with each request's, instead of an :class:`Origin` made for each (a
    request whose parts differ, credentials in its URL say, is asked :func:`origin_of`)."""
    port = None if DEFAULT_PORTS.get(origin.scheme) == origin.port else origin.port
    return origin.scheme, "", origin.host, port


def _parts_public(url: httpx.URL) -> Parts:
    return url.scheme, url.userinfo.decode("ascii"), url.host, url.port


def _parts_parsed(url: httpx.URL) -> Parts:
    """:func:`_parts_public`: the first four of the parsed form."""
    parts: Parts = url._uri_reference[:4]
    return parts


def _redirects_public(headers: httpx.Headers) -> bool:
    return any(name.lower() in _REDIRECT_NAMES for name, _ in headers.raw)


def _redirects_parsed(headers: httpx.Headers) -> bool:
    """:func:`_redirects_public` from the lower-case names httpx keeps (a third of the time,
    once per response)."""
    return not _REDIRECT_NAMES.isdisjoint([lower for _, lower, _ in headers._list])


def _probe() -> bool:
    """Whether this httpx keeps its parsed URL as :func:`_origin_parsed` and
    :func:`_parts_parsed` expect."""
    try:
        urls = [httpx.URL(text) for text in ("http://Svc/x?y", "https://[::1]:8443/",
                                             "http://a:80", "https://a:80/")]
        headers = [httpx.Headers(pairs) for pairs in (
            [("Content-Location", "/x"), ("X", "y")], [("X-Location", "/x")], [])]
        return all(_origin_parsed(url) == _origin_public(url)
                   and _parts_parsed(url) == _parts_public(url) == parts_of(_origin_public(url))
                   for url in urls) and all(
            _redirects_parsed(h) == _redirects_public(h) for h in headers)
    except (AttributeError, TypeError, ValueError):
        return False


_FAST = _probe()
#: ``origin_of(url)``: the :class:`Origin` of an httpx URL.
origin_of = _origin_parsed if _FAST else _origin_public
#: ``origin_parts(url)``: the parts of an httpx URL that :func:`parts_of` gives an origin.
origin_parts = _parts_parsed if _FAST else _parts_public
#: ``has_redirects(headers)``: whether httpx ``headers`` hold a ``Location``,
#: ``Content-Location`` or ``Refresh``.
has_redirects = _redirects_parsed if _FAST else _redirects_public
