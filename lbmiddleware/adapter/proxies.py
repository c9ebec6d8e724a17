"""The proxies an attempt goes through: requests' own reading of the environment
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), redone for the backend's URL.

A ``requests.Session`` decides a call's proxies from the URL the caller named: the virtual
host (``http://orders``), which no proxy rule is written for. ``NO_PROXY=10.0.0.0/8`` naming
the backends' network would be missed (every backend reached through the proxy), and
``NO_PROXY`` naming the virtual host would spare backends that need the proxy. So the adapter
takes the environment's part out of the proxies the Session gave (the entries equal to what
the environment names for the virtual URL) and adds, as requests' ``merge_environment_settings``
does, what the environment names for each backend's URL (``no_proxy`` among the given
proxies read for it too). What the caller gave (``proxies=``, ``Session.proxies``) wins, as
in requests, and requests' ``select_proxy`` reads its keys (``http``, ``http://host``) on the
backend's URL.

Whether the Session reads the environment at all (``trust_env``) is seen from those proxies:
when the environment names proxies for the virtual URL and none of them came, it does not.
When ``NO_PROXY`` names the virtual host the Session added nothing either way; the adapter
then reads the environment (requests' default).

The environment is read with requests' functions (``get_environ_proxies``: the variables,
and the system's settings on macOS and Windows), so that a backend is reached as a plain
``requests.get(backend_url)`` would reach it. Reading it costs about 50 us, a call twice
more; the answers are kept per variables' values, scheme, host, port and ``no_proxy``
(:func:`environment_proxies`), so a change of the variables is seen at once (a change of
the system's settings alone, on macOS or Windows, is not).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping

from requests.utils import get_environ_proxies

from ..core.backend import Backend

__all__ = ["CallProxies", "DIRECT", "environment_proxies"]

# What requests' reading of the environment depends on for an http(s) URL: the variables of
# its scheme, ALL_PROXY and NO_PROXY, either case (urllib reads every *_proxy, but only these
# can name a proxy for http and https), and REQUEST_METHOD (under CGI, HTTP_PROXY is the
# client's Proxy header: urllib ignores it then).
_VARIABLES = tuple(name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                   for name in (base, base.upper())) + ("REQUEST_METHOD",)


def environment_proxies(url: str, no_proxy: str | None = None) -> dict[str, str]:
    """What requests' ``get_environ_proxies(url, no_proxy)`` gives (the environment's
    proxies, or nothing when ``NO_PROXY`` or ``no_proxy`` names ``url``'s host), kept per
    variables' values and ``url``'s scheme, host and port."""
    return dict(_environment(_snapshot(), _origin(url), no_proxy))


def _read_snapshot() -> Callable[[], tuple[object, ...]]:
    """What the variables hold now: read from ``os.environ``'s own dictionary, by keys
    spelled as it keeps them (``encodekey``: bytes on POSIX, upper case on Windows), when it
    has one: ``os.environ.get`` of a missing name costs a KeyError, nine of them 5-10 us."""
    data = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encode):
        try:
            keys = tuple(encode(name) for name in _VARIABLES)
        except Exception:       # (another Python's environ)
            keys = ()
        if keys:
            return lambda: tuple(map(data.get, keys))
    return lambda: tuple(map(os.environ.get, _VARIABLES))


#: ``_snapshot()``: the values of the variables requests' reading depends on, now.
_snapshot = _read_snapshot()


def _origin(url: str) -> str:
    """``scheme://netloc`` of an absolute URL (all that requests' reading looks at)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('/')[0].partition('?')[0].partition('#')[0]}"


@functools.lru_cache(maxsize=512)
def _environment(snapshot: tuple[object, ...], origin: str, no_proxy: str | None
                 ) -> tuple[tuple[str, str], ...]:
    return tuple(get_environ_proxies(origin + "/", no_proxy=no_proxy).items())


class CallProxies:
    """The proxies of one call (``given``: what the Session passed the adapter for the
    caller's ``url``), for each backend it tries (:meth:`for_backend`)."""

    __slots__ = ("explicit", "trust_env", "no_proxy", "_snapshot")

    def __init__(self, given: Mapping[str, str] | None, url: str) -> None:
        given = given or {}
        self.no_proxy = no_proxy = given.get("no_proxy")
        self._snapshot = snapshot = _snapshot()
        virtual = dict(_environment(snapshot, _origin(url), no_proxy)) if url else {}
        came = [name for name, proxy in virtual.items() if given.get(name) == proxy]
        #: The caller's own proxies (the environment's part taken out).
        self.explicit = {name: proxy for name, proxy in given.items()
                         if virtual.get(name) != proxy}
        #: Whether the Session reads the environment (see the module doc).
        self.trust_env = bool(came) or not virtual

    def for_backend(self, backend: Backend) -> dict[str, str]:
        """The proxies for an attempt on ``backend`` (decided by its URL: its address, not
        the server name a DNS source found it by)."""
        if not self.trust_env:
            return dict(self.explicit)
        found = _environment(self._snapshot, _origin(backend.url), self.no_proxy)
        if not found:
            return dict(self.explicit)
        proxies = dict(found)
        proxies.update(self.explicit)           # the caller's win
        return proxies


class _Direct(CallProxies):
    """No proxy, whatever the environment says."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None, "")
        self.trust_env = False

    def for_backend(self, backend: Backend) -> dict[str, str]:
        return {}


#: The proxies of a call that goes to its backends directly (a reverse proxy's).
DIRECT: CallProxies = _Direct()
