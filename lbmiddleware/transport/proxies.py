"""The proxy each inner transport goes through: ``proxy=`` for all, else the one the
environment names for the real URL the transport reaches (a backend's, or another origin's),
read as httpx reads it, so the transport and a plain ``httpx.Client`` agree.

httpx reads ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` (a bare ``host:port`` meaning
``http://host:port``, as curl reads it) and ``NO_PROXY`` (hosts, domains, ``host:port``,
IPv4 and IPv6 addresses) into URL patterns, the most specific first; it does so in private
functions (``httpx._utils``), used here while they answer as expected, else the standard
library's reading with httpx's two differences put back (the scheme a bare proxy lacks, an
IPv6 address in ``NO_PROXY``). Either way the proxy is handed over as an ``httpx.Proxy``:
httpx 0.24 and 0.25 take nothing else.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import httpx

__all__ = ["as_proxy", "environment_proxy", "httpx_environment_proxy",
           "urllib_environment_proxy"]


def as_proxy(proxy: str | httpx.URL | httpx.Proxy) -> httpx.Proxy:
    """``proxy`` as every httpx version from 0.24 takes it."""
    return proxy if isinstance(proxy, httpx.Proxy) else httpx.Proxy(proxy)


def with_scheme(proxy: str) -> str:
    """A proxy named without a scheme (``127.0.0.1:3128``) is an HTTP proxy, as curl and
    httpx read it."""
    return proxy if "://" in proxy else f"http://{proxy}"


def urllib_environment_proxy(url: httpx.URL) -> str | None:
    """The standard library's reading (``urllib.request.getproxies``: the variables, and the
    system's settings on macOS and Windows), with httpx's scheme for a bare proxy and an
    IPv6 host matched without its brackets."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host, port = url.host, url.port
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if urllib.request.proxy_bypass(netloc) or (":" in host
                                                and urllib.request.proxy_bypass(host)):
        return None
    return with_scheme(proxy)


def _httpx_reader() -> Callable[[httpx.URL], str | None] | None:
    """httpx's own reading, if its private functions are there and answer as expected."""
    try:
        from httpx._utils import URLPattern, get_environment_proxies

        def read(url: httpx.URL) -> str | None:
            mounts = get_environment_proxies()
            for pattern in sorted(URLPattern(key) for key in mounts):
                if pattern.matches(url):
                    return mounts[pattern.pattern]
            return None

        probe = URLPattern("all://[::1]").matches(httpx.URL("http://[::1]:8/"))
    except Exception:       # (moved or changed in another httpx version)
        return None
    return read if probe else None


_from_httpx = _httpx_reader()


def httpx_environment_proxy(url: httpx.URL) -> str | None:
    """httpx's reading, else the standard library's (:func:`urllib_environment_proxy`)."""
    if _from_httpx is not None:
        try:
            return _from_httpx(url)
        except Exception:   # a variable this httpx cannot parse: the other reading
            pass
    return urllib_environment_proxy(url)


def environment_proxy(url: httpx.URL) -> httpx.Proxy | None:
    """The proxy the environment names for ``url``, or None (none named, or ``NO_PROXY``
    names its host)."""
    proxy = httpx_environment_proxy(url)
    return None if proxy is None else httpx.Proxy(with_scheme(proxy))
