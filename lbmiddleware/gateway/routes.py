"""The router of a gateway with routes (``serve --config``): an ASGI app that hands each
request to the :class:`~lbmiddleware.asgi.LoadBalancerMiddleware` of its route.

A route matches a path prefix (``/api`` matches ``/api`` and ``/api/x``, not ``/apix``:
:func:`~lbmiddleware.proxy.match_prefix`, as the middleware itself matches it) and, when it
has one, the request's ``Host`` (port ignored, any case). The longest prefix wins; of two
routes with the same prefix, the one for the request's host wins over the host-less one
(``Session.mount``'s rule in requests, and Traefik's longest rule first). A request under no
route gets 404 (a WebSocket too, through the ASGI denial-response extension; a close
before its handshake where the server lacks it: 403), as the middleware answers outside
its prefix.

The table is replaced whole on a reload (:meth:`Router.swap`): a request holds the entry it
matched until it ends, so a reload never cuts one. Each entry counts its requests in flight;
an entry retired by a reload is closed (its middleware's connections, and its pool when no
entry uses it any more) once the last of them ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

from ..asgi import LoadBalancerMiddleware
from ..asgi.access import AccessRecord
from ..asgi.websocket import DENIAL, deny_error
from ..fleet.pool import Balancer
from ..proxy import error_response, match_prefix
from .config import Route

__all__ = ["Router", "Entry", "request_host"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("lbmiddleware.gateway")


class Entry:
    """One route being served: its middleware and the pool it forwards to. ``active``
    counts the requests in it now (:meth:`enter`, :meth:`leave`: the router's and the fast
    server's dispatcher's); once ``retired`` and idle, :attr:`on_idle` runs."""

    def __init__(self, route: Route, middleware: LoadBalancerMiddleware,
                 balancer: Balancer) -> None:
        self.route = route
        self.middleware = middleware
        self.balancer = balancer
        self.active = 0
        self.retired = False
        #: Called once when the entry is retired and idle (the gateway closes it then).
        self.on_idle: Callable[[Entry], None] | None = None
        self._host = route.host
        self._prefix = route.prefix

    def matches(self, host: str | None, path: str) -> bool:
        return (self._host is None or self._host == host) and \
            match_prefix(self._prefix, path) is not None

    def enter(self) -> None:
        """A request is served by this entry from now on (every front-end calls it, then
        :meth:`leave` exactly once when the request ends)."""
        self.active += 1

    def leave(self) -> None:
        """A request that :meth:`enter` ed ended; the last one of a retired entry runs
        :attr:`on_idle`."""
        self.active -= 1
        if self.retired and self.active == 0:
            self._idle()

    def retire(self) -> None:
        """No new request comes here; :attr:`on_idle` once the last one in flight ends."""
        self.retired = True
        if self.active == 0:
            self._idle()

    def _idle(self) -> None:
        callback, self.on_idle = self.on_idle, None
        if callback is not None:
            callback(self)


class Router:
    """The ASGI app over the routes' middlewares (see the module's docstring); ``entries``
    longest prefix first, a host's before the host-less one of the same prefix
    (:class:`~lbmiddleware.gateway.config.GatewayConfig` orders them so). Lifespan events
    are the gateway's (:class:`~lbmiddleware.gateway.app.RoutesGatewayApp`), not passed on.
    ``access_log``: a request under no route gets its access line."""

    def __init__(self, entries: Sequence[Entry], *, access_log: bool = False) -> None:
        self._table = _table(entries)
        self.access_log = access_log
        start, body = _not_found()
        self._not_found_start, self._not_found_body = start, body

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._table[0]

    @property
    def hosts(self) -> bool:
        """Whether a route of the table names a host (else the ``Host`` header is not read)."""
        return self._table[1]

    def match(self, host: str | None, path: str) -> Entry | None:
        """The entry for a request to ``host`` (:func:`request_host`) and ``path``."""
        for entry in self._table[0]:
            if entry.matches(host, path):
                return entry
        return None

    def lookup(self, headers: Iterable[tuple[bytes, bytes]], path: str) -> Entry | None:
        """The entry for a request with ``headers`` (names in lower case, as ASGI gives them)
        and ``path``: its ``Host`` read only when a route names a host. One table for both
        questions, even while :meth:`swap` runs on another thread."""
        entries, hosts = self._table
        host = request_host(headers) if hosts else None
        for entry in entries:
            if entry.matches(host, path):
                return entry
        return None

    def swap(self, entries: Sequence[Entry]) -> list[Entry]:
        """Serve ``entries`` from now on; returns those of the old table that are not among
        them (the caller retires them)."""
        old = self._table[0]
        self._table = _table(entries)
        kept = {id(entry) for entry in entries}
        return [entry for entry in old if id(entry) not in kept]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        entry = self.lookup(scope["headers"], scope["path"])
        if entry is None:
            await self._no_route(scope, receive, send)
            return
        entry.enter()
        try:
            await entry.middleware(scope, receive, send)
        finally:
            entry.leave()

    async def _no_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """404, with its access line when a route logs; a WebSocket's as the middleware
        answers one outside its prefix (:func:`~lbmiddleware.asgi.websocket.deny_error`)."""
        websocket = scope["type"] == "websocket"
        if websocket and (await receive())["type"] != "websocket.connect":
            return                  # gone before its handshake reached us
        record = AccessRecord(send) if self.access_log else None
        out = record if record is not None else send
        if websocket:
            await deny_error(out, (dict(self._not_found_start), dict(self._not_found_body)),
                             denial=DENIAL in (scope.get("extensions") or ()))
        else:
            await out(dict(self._not_found_start))
            await out(dict(self._not_found_body))
        if record is not None:
            client = scope.get("client")
            record.log(client[0] if client else None, scope.get("method", "GET"),
                       scope["path"])


def request_host(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The host a request names in its ``Host`` header (ASGI: names in lower case), in
    lower case, without its port or a trailing dot (``[::1]`` keeps its brackets); None
    without one."""
    raw = next((value for name, value in headers if name == b"host"), None)
    if not raw:
        return None
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[:end + 1] if end != -1 else text
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        text = host
    return text.rstrip(".") or None


def _table(entries: Sequence[Entry]) -> tuple[tuple[Entry, ...], bool]:
    """A router's table: its entries, and whether one of them names a host."""
    return tuple(entries), any(entry.route.host is not None for entry in entries)


def _not_found() -> tuple[Message, Message]:
    error = error_response(404)
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in error.headers]
    return ({"type": "http.response.start", "status": error.status, "headers": headers},
            {"type": "http.response.body", "body": error.body, "more_body": False})


async def close_entry(entry: Entry, *, balancer: bool) -> None:
    """Close ``entry``'s middleware (its idle upstream connections) and, with ``balancer``,
    its pool (sources and health checks), logging what fails rather than raising."""
    try:
        await entry.middleware.aclose()
        if balancer:
            await entry.balancer.aclose()
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("closing the pool of route %r failed", entry.route.name)
