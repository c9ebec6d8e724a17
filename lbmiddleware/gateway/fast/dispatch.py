"""Which handler answers a request on the fast path (:class:`Dispatcher`): the route, then
the proxy's own refusals, else a :class:`~.exchange.FastExchange`.

As the ASGI path decides it: a gateway of a config file matches the request's host and path
against its routes (:meth:`Router.lookup <lbmiddleware.gateway.routes.Router.lookup>`), a
request under none gets 404; the route's middleware matches its prefix
(:func:`~lbmiddleware.proxy.match_prefix`: 404 outside it) and prepares the request by its
rules (:meth:`LoadBalancerMiddleware.prepare <lbmiddleware.asgi.LoadBalancerMiddleware.
prepare>`: an :class:`~lbmiddleware.proxy.UnsafeRequest` is answered with its status, 400 or
501). Each request in a route counts in its :class:`~lbmiddleware.gateway.routes.Entry`
while it is served (``Entry.enter``/``leave``), and a route retired by a reload is closed once
its last one ends, as the router does. With ``LB_ACCESS_LOG`` (the route's, or the router's
for a request under no route) every request ends with its access line.

What one route's exchanges share (:class:`~.exchange.Route`) is made at the route's first
request, on the server's loop: the upstream pools of the fast path (one
:class:`~.upstream.UpstreamPools` per middleware, with the middleware's timeouts and TLS
context), which let go of the backends that leave the pool
(:func:`~lbmiddleware.fleet.departures.follow_departures`) and close with the middleware
(:meth:`~lbmiddleware.asgi.LoadBalancerMiddleware.on_close`: a retired route's as it goes
idle) or with the dispatcher (:meth:`Dispatcher.close`, at the server's shutdown); and the
pool's lock-free lane (:meth:`Balancer.own <lbmiddleware.core.balancer.Balancer.own>`): the
server's loop owns each pool its requests pick from.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ...asgi import LoadBalancerMiddleware
from ...core.events import MembershipChanged
from ...fleet.departures import follow_departures
from ...proxy import UnsafeRequest, match_prefix
from ..app import GatewayApp, RoutesGatewayApp
from ..routes import Entry
from .exchange import FastExchange, Route, log_access
from .upstream import UpstreamPools
from .wire import error_bytes

if TYPE_CHECKING:
    from .connection import ClientConnection, Handler, Request

__all__ = ["Dispatcher"]


class _Answered:
    """The handler of a request answered at once (the connection drops its body)."""

    __slots__ = ()

    def body(self, data: bytes) -> None:
        pass

    def body_end(self) -> None:
        pass

    def client_lost(self) -> None:
        pass


_ANSWERED = _Answered()


class Dispatcher:
    """The fast server's dispatch over the gateway's app (see the module's docstring)."""

    __slots__ = ("app", "_router", "_single", "_routes")

    def __init__(self, app: GatewayApp | RoutesGatewayApp) -> None:
        self.app = app
        self._router = app.router if isinstance(app, RoutesGatewayApp) else None
        self._single: Route | None = None       # a GatewayApp's one route
        self._routes: dict[LoadBalancerMiddleware, Route] = {}     # a router's, by middleware

    def dispatch(self, request: Request, connection: ClientConnection) -> Handler:
        """The handler of ``request`` (its exchange), or a request answered at once."""
        router = self._router
        entry: Entry | None = None
        if router is None:
            route = self._single
            if route is None:
                app = self.app
                if not isinstance(app, GatewayApp):
                    raise TypeError(f"a gateway app without a router: {app!r}")
                route = self._single = self._route(app, connection)
        else:
            entry = router.lookup(request.headers, request.path)
            if entry is None:
                return _answer(404, request, connection, router.access_log)
            middleware = entry.middleware
            route = self._routes.get(middleware) or self._route(middleware, connection)
        path = match_prefix(route.prefix, request.path, route.strip)
        middleware = route.middleware
        if path is None:
            return _answer(404, request, connection, route.access_log, middleware)
        try:
            prepared = middleware.prepare(request.headers, path, request.raw_path,
                                          request.query, connection.peer, connection.scheme,
                                          request.version, request.length)
        except UnsafeRequest as exc:         # 400, or 501 for a WebSocket upgrade
            return _answer(exc.status, request, connection, route.access_log, middleware)
        if entry is not None:
            entry.enter()
        exchange = FastExchange(route, request, connection, prepared, entry)
        exchange.begin()
        return exchange

    def _route(self, middleware: LoadBalancerMiddleware, connection: ClientConnection
               ) -> Route:
        """What ``middleware``'s exchanges share, made at its first request."""
        loop = connection.loop
        state = connection.state
        balancer = middleware.balancer
        picker = balancer.own(loop)         # (the same lane for every route on the pool)
        forwarding = middleware.forwarding
        pools = UpstreamPools(connect_timeout=forwarding.connect_timeout,
                              read_timeout=forwarding.read_timeout, ssl=middleware.upstream.ssl,
                              loop=loop, deadlines=state.deadlines, outbox=state.outbox)
        route = Route(middleware, middleware.forwarder, picker, pools, state.date)
        route.unsubscribe = follow_departures(route, balancer, _forget_departed)
        if middleware is not self.app:
            self._routes[middleware] = route
        middleware.on_close(functools.partial(self._closed, middleware))
        return route

    def _closed(self, middleware: LoadBalancerMiddleware) -> None:
        """``middleware`` was closed (a route retired by a reload, idle now; the shutdown):
        its route's upstream connections close too."""
        route = self._routes.pop(middleware, None)
        if route is None and self._single is not None and self._single.middleware is middleware:
            route, self._single = self._single, None
        if route is not None:
            route.close()

    def close(self) -> None:
        """Close every route's upstream connections (the idle ones now, those in use as their
        responses end), stop following their pools and give the pools back to every thread
        (:meth:`~lbmiddleware.core.balancer.Balancer.disown`: the app's shutdown closes them
        from any thread); the server calls it at its shutdown, once the requests are over."""
        routes = list(self._routes.values())
        if self._single is not None:
            routes.append(self._single)
        self._routes.clear()
        self._single = None
        for route in routes:
            route.close()
            route.middleware.balancer.disown()      # (nothing for a pool disowned already)


def _answer(status: int, request: Request, connection: ClientConnection, log: bool,
            middleware: LoadBalancerMiddleware | None = None) -> Handler:
    """The proxy's own answer to ``request`` (404, 400, 501) at once, with its access line
    when ``log`` (the client's address as ``middleware`` reads it; the peer's under no
    route, as the router logs it). A request with a body is answered before it: the body
    is dropped and the connection closes, saying so (``connection: close``, as granian
    answers; RFC 9112 9.6), rather than wait for it (review H1)."""
    keep_alive = request.keep_alive and request.length == 0
    connection.write(error_bytes(status, date=connection.state.date.value(),
                                 close=not keep_alive, head_only=request.method == "HEAD"))
    if log:
        peer = connection.peer
        log_access(request, peer if middleware is None
                   else middleware.client_address(peer, request.headers), status, None)
    connection.done(keep_alive)
    return _ANSWERED


def _forget_departed(route: Route, event: MembershipChanged) -> None:
    """Backends left the route's pool: their upstream connections of the fast path go (the
    idle ones now, the others as their responses end; safe from the fleet's thread)."""
    route.pools.forget(event.removed)
