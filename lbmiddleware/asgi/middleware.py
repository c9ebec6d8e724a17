"""ASGI middleware: requests under a prefix are reverse-proxied to a pool of backends.

Plain ASGI (no ``BaseHTTPMiddleware``), so it works with ``app.add_middleware`` in
Starlette and FastAPI, or alone (``app=None``) as the gateway's whole application::

    app.add_middleware(lb.LoadBalancerMiddleware, prefix="/api",
                       backends=["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
                       policy="ip_hash", trusted_proxies=["10.0.0.0/8"])
    app.add_middleware(lb.LoadBalancerMiddleware)      # every setting from LB_* variables

Per request: match the prefix, turn the scope into an upstream head with the rules of
:mod:`lbmiddleware.proxy` and a sticky key, then hand it to an
:class:`~lbmiddleware.asgi.exchange.Exchange`: the core's attempt loop over the keep-alive
pool of :mod:`lbmiddleware.upstream`, retrying while nothing has reached the client, then
the response streamed back and its outcome reported to the balancer.

Request bodies up to ``retry_buffer`` bytes [64 KiB] are held in memory so a retry can
send them again; a larger body is streamed and is not replayable once it has started to
go upstream (a connect failure, before any byte is sent, is still retried).

With ``sticky_cookie`` (``LB_STICKY_COOKIE``) a request's cookie of that name names the
backend to prefer, and a response from another backend gets a ``Set-Cookie`` for it, with
``Path`` the prefix (:mod:`lbmiddleware.proxy.sticky`); the ``Cookie`` header still goes
upstream as the client sent it, ours included (nginx's ``sticky cookie`` and Traefik leave it
too: the value is opaque, and rewriting the header could change the other cookies' bytes).
With ``timeout`` (``LB_TIMEOUT``) the request's attempts share a deadline up to the response
head, counted from the moment it is forwarded: each attempt gets the time left (connect,
upload and wait together), and the client gets 504 when it runs out.

WebSockets under the prefix (an ASGI ``websocket`` scope) are proxied: the handshake's
attempts before the client is answered, then messages both ways until either side closes
(:mod:`lbmiddleware.asgi.websocket`); other websocket scopes go to the app. A WebSocket
handshake that reaches the middleware as an HTTP request (a server with WebSockets off)
cannot be upgraded through ASGI's ``http`` scope: it gets 501.

A client that disconnects cancels the upstream exchange (its connection is closed, the
pick released): see :mod:`lbmiddleware.asgi.exchange`.

With ``access_log`` (``LB_ACCESS_LOG``) each request under the prefix (and, with no app,
each one outside it) and each WebSocket ends with one line on the
``lbmiddleware.access`` logger, at INFO: see :mod:`lbmiddleware.proxy.access`. Off, the
per-request path does not change.

A pool with sources built inside the server's running loop (Starlette builds its middleware
there, at the first call) does not wait for their first answers in its constructor: the
middleware awaits :meth:`~lbmiddleware.Balancer.ready` once, at the lifespan's startup (the
server takes no request before it completes), else before its first request; after that
the check is one attribute test.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, NamedTuple

from .. import fleet
from ..core.balancer import Balancer
from ..core.events import MembershipChanged
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve
from ..fleet.departures import follow_departures
from ..proxy import (
    BINARY,
    ClientAddress,
    StickyCookie,
    UnsafeRequest,
    client_scheme,
    error_response,
    join_target,
    match_prefix,
    quote_path,
    sticky_key,
)
from ..proxy.redirects import RedirectRule
from ..proxy.settings import ProxySettings
from ..upstream import Upstream
from ..upstream.deadlines import Deadlines
from ..upstream.tls import backend_ssl_context
from .access import AccessRecord
from .exchange import NO_BODY, ClientGone, Exchange, Forwarder, NoBody, RequestBody
from .websocket import DENIAL, Tunnel
from .websocket import upstream_headers as upstream_handshake

__all__ = ["LoadBalancerMiddleware", "Prepared", "FROM_HEADERS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Prepared(NamedTuple):
    """A request as it goes upstream (:meth:`LoadBalancerMiddleware.prepare`): the request
    ``target`` (without the backend's base path), the upstream ``headers`` (``add_host``:
    they have no ``Host``, the backend's goes first), the body's ``length`` (0: none, None:
    unknown, chunked), the sticky ``key``, the sticky cookie's value (``prefer``) and whether
    the client's scheme is https (``secure``: the cookie's attribute)."""

    target: bytes
    headers: list[tuple[bytes, bytes]]
    add_host: bool
    length: int | None
    key: str | None
    prefer: str | None
    secure: bool


#: :meth:`LoadBalancerMiddleware.prepare`'s ``length`` when the server has not framed the body
#: itself: the rules read it from the headers.
FROM_HEADERS = -1

# Builds a Prepared from its seven fields in order, without the generated ``__new__``'s
# argument binding (once per proxied request).
_new_prepared = functools.partial(tuple.__new__, Prepared)


class LoadBalancerMiddleware:
    """Reverse-proxy requests under ``prefix`` to a load-balanced pool of backends.

    Keyword arguments are settings, each of the class that owns it: the Balancer's
    (``backends``, ``policy``, ``max_fails``, ...), the forwarding settings (``retries``,
    ``read_timeout``, ``hash_key``, ...: ``self.forwarding``) and the proxy's own (``prefix``,
    ``strip_prefix``, ``trusted_proxies``, ``retry_buffer``, ``access_log``: ``self.settings``,
    a :class:`~lbmiddleware.ProxySettings`). Without ``backends`` every setting not given comes
    from ``LB_*`` variables (``environ`` for tests). ``settings=`` passes a ready
    ``ProxySettings``, ``ForwardingSettings`` or ``Settings``, or every setting at once (the
    gateway's ``load_settings()``). ``balancer=`` shares a :class:`Balancer`: its own settings
    are then set on it, while the forwarding and proxy settings are this middleware's, from its
    keywords, else ``LB_*``, else the defaults (``retries=0`` here, 2 in an adapter on the same
    pool). ``app`` may be ``None``: requests outside the prefix then get 404 (websockets
    too).

    ``app`` is positional-only, so that Starlette's ``add_middleware`` and ``Middleware``
    type-check: their factory protocol passes the app positionally and the options as
    ``**kwargs``, which must not be able to name ``app`` again. Starlette before 0.35 (and
    FastAPI's own stack then) built middleware with ``cls(app=app, **options)``: ``app=``
    is still taken for them.

    At the ASGI lifespan's startup the middleware waits, without blocking the loop, for
    each source's first answer (up to ``FIRST_ANSWER_TIMEOUT``, 5 s, after the pool was
    built), so that the server takes its first request with the members known; where
    there is no lifespan the first request waits. At the lifespan's shutdown (the wrapped
    app's, or the middleware's own when it is the whole application) the idle upstream
    connections are closed and the pool the middleware built stops its sources and health
    checks (:meth:`aclose`); a shared ``balancer=`` is left to its owner.

    A backend that leaves the pool (removed by its source or ``update()``, drained) loses
    this middleware's upstream connections: the idle ones at once, on their loop, the
    others as their responses end (a request in flight is not cut); if it comes back, it
    gets new ones. Each middleware on a shared ``balancer=`` closes its own.
    """

    def __init__(self, app: ASGIApp | None = None, /, *,
                 settings: Settings | ForwardingSettings | ProxySettings | FrontEndSettings
                 | None = None,
                 balancer: Balancer | None = None, environ: Mapping[str, str] | None = None,
                 upstream: Upstream | None = None, **options: Any) -> None:
        if "app" in options:        # cls(app=app, **options): Starlette before 0.35
            if app is not None:
                raise TypeError("LoadBalancerMiddleware() got multiple values for argument 'app'")
            app = options.pop("app")
        self.app = app
        resolved = resolve("LoadBalancerMiddleware", (ForwardingSettings, ProxySettings), options,
                           shared=None if balancer is None else balancer.settings,
                           settings=settings, environ=environ)
        self._owns_balancer = balancer is None
        self.balancer = balancer if balancer is not None else fleet.Balancer(
            settings=resolved.core)
        self._ready = False         # until the sources' first answers came (or timed out)
        self.settings = proxy = resolved[ProxySettings]
        self.forwarding = forwarding = resolved[ForwardingSettings]
        # https backends: the pool's TLS settings (LB_BACKEND_CA ...), one context per pool
        self.upstream = upstream if upstream is not None else Upstream(
            connect_timeout=forwarding.connect_timeout, read_timeout=forwarding.read_timeout,
            ssl=backend_ssl_context(self.balancer.settings))
        self._prefix = proxy.prefix
        self._prefix_bytes = proxy.prefix.encode("utf-8")
        self._strip = proxy.strip_prefix
        # the client's raw path goes upstream as it is (nothing to strip from it)
        self._raw_as_sent = not self._strip or self._prefix == "/"
        self._preserve_host = forwarding.preserve_host
        self._client_address = ClientAddress(proxy.trusted_proxies)
        self._trusting = bool(proxy.trusted_proxies)
        self._sticky = self.balancer.policy == "ip_hash"
        self._hash_key = forwarding.hash_key
        self._retry_buffer = proxy.retry_buffer
        self._access_log = proxy.access_log
        self._errors = {status: _asgi_error(status) for status in (400, 404, 501, 502, 503, 504)}
        # The sticky cookie, scoped to the prefix so that two routes' cookies do not meet
        # (a ';' would end the Path attribute: it is the one character quote_path keeps).
        self._cookie = (StickyCookie(forwarding.sticky_cookie,
                                     quote_path(proxy.prefix).replace(";", "%3B"))
                        if forwarding.sticky_cookie else None)
        # What every exchange shares, with the forwarding settings' retry rule.
        self._forwarder = Forwarder(self.balancer, self.upstream, forwarding.retry_rule(),
                                    Deadlines(), self._errors, cookie=self._cookie,
                                    timeout=forwarding.timeout,
                                    redirects=RedirectRule(proxy.prefix, proxy.strip_prefix))
        self._unsubscribe = follow_departures(self, self.balancer, _forget_departed)
        self._closers: list[Callable[[], None]] = []     # on_close's, called by aclose

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = match_prefix(self._prefix, scope["path"], self._strip)
            if path is None and self.app is not None:
                await self.app(scope, receive, send)
            elif self._access_log:
                await self._logged(scope, receive, send, path)
            elif path is not None:
                await self._proxy(scope, receive, send, path)
            else:
                await self._send_error(send, 404)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket":
            path = match_prefix(self._prefix, scope["path"], self._strip)
            if path is None and self.app is not None:
                await self.app(scope, receive, send)
            elif self._access_log:
                await self._logged_websocket(scope, receive, send, path)
            else:
                await self._websocket(scope, receive, send, path)
        elif self.app is not None:
            await self.app(scope, receive, send)

    # -- the proxy ----------------------------------------------------------------------

    async def _logged(self, scope: Scope, receive: Receive, send: Send, path: str | None
                      ) -> None:
        """:meth:`_proxy` (or the 404 of a gateway's path outside the prefix) with its
        access log line written at the end (:mod:`lbmiddleware.proxy.access`)."""
        record = AccessRecord(send)
        gone = False
        try:
            if path is None:
                await self._send_error(record, 404)
            else:
                gone = not await self._proxy(scope, receive, record, path, record)
        finally:
            record.log(self._client(scope), scope["method"], scope["path"], gone)

    async def _logged_websocket(self, scope: Scope, receive: Receive, send: Send,
                                path: str | None) -> None:
        """:meth:`_websocket` with its access log line, written at the close (``GET``, 101
        once accepted, else the status the handshake got; 403 for a close before it)."""
        record = AccessRecord(send)
        try:
            await self._websocket(scope, receive, record, path, record)
        finally:
            record.log(self._client(scope), "GET", scope["path"])

    def _client(self, scope: Scope) -> str | None:
        """The client's address: the peer, or from a trusted proxy's X-Forwarded-For."""
        client = scope.get("client")
        return self.client_address(client[0] if client else None, scope["headers"])

    def client_address(self, peer: str | None, headers: list[tuple[bytes, bytes]]
                       ) -> str | None:
        """The client's address for the access log: ``peer``, or from a trusted proxy's
        ``X-Forwarded-For`` among ``headers`` (names in lower case)."""
        if self._trusting and self._client_address.is_trusted(peer):
            return self._client_address(peer, BINARY.get(headers, "x-forwarded-for"))
        return peer

    def prepare(self, headers: list[tuple[bytes, bytes]], path: str, raw_path: bytes | None,
                query: bytes | None, peer: str | None, scheme: str, http_version: str,
                length: int | None = FROM_HEADERS) -> Prepared:
        """What goes upstream for a request under the prefix, by the proxy's rules: the
        request target (``path``: what :func:`~lbmiddleware.proxy.match_prefix` gave,
        spelled as the client did when ``raw_path`` has it), the upstream headers, the
        body's length, the sticky key and the sticky cookie's value. ``headers``: the
        request's, names in lower case (ASGI's). Every front-end of the middleware calls it
        (the ASGI one here, the gateway's fast server), so the rules are applied once.

        Raises :class:`~lbmiddleware.proxy.UnsafeRequest` (its ``status``: 400, or 501 for a
        WebSocket upgrade) for a request that cannot be forwarded. ``length``: the body's
        length as the server framed it (0: none, None: chunked), when it did (the fast
        server's parser); else read from the headers (:data:`FROM_HEADERS`)."""
        trusted = self._trusting and self._client_address.is_trusted(peer)
        if length == FROM_HEADERS:
            upstream_headers, length = BINARY.request(
                headers, peer=peer, scheme=scheme, preserve_host=self._preserve_host,
                trusted_peer=trusted)
            if length == 0 and http_version not in _HTTP1 \
                    and not BINARY.get(headers, "content-length"):
                length = None       # HTTP/2 and 3 frame a body without either header
        else:
            # (positional: the fast server's every request)
            upstream_headers = BINARY.request_headers(headers, peer, scheme, None,
                                                      self._preserve_host, trusted)
        if raw_path and self._raw_as_sent and 63 not in raw_path:
            upstream_path = raw_path        # (the usual case, without a call)
        else:
            upstream_path = self._upstream_path(path, raw_path)
        target = join_target(b"", upstream_path, query)
        key = None
        if self._sticky:
            ip = peer
            if self._hash_key == "client_ip" and trusted:
                ip = self._client_address(peer, BINARY.get(headers, "x-forwarded-for"))
            key = sticky_key(self._hash_key, ip, headers)
        prefer = None
        secure = False
        cookie = self._cookie
        if cookie is not None:      # (the Cookie header goes upstream as the client sent it)
            prefer = cookie.read_binary(headers)
            secure = client_scheme(
                scheme, BINARY.get(headers, "x-forwarded-proto") if trusted else ()) == "https"
        add_host = not (upstream_headers and upstream_headers[0][0] == b"Host")
        return _new_prepared((target, upstream_headers, add_host, length, key, prefer, secure))

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, path: str,
                     record: AccessRecord | None = None) -> bool:
        """Forward one request; False if the client left before it could be sent.
        ``record``: its access log line, told of the exchange."""
        client = scope.get("client")
        try:
            prepared = self.prepare(scope["headers"], path, scope.get("raw_path"),
                                    scope.get("query_string"), client[0] if client else None,
                                    scope.get("scheme", "http"),
                                    scope.get("http_version", "1.1"))
        except UnsafeRequest as exc:         # 400, or 501 for a WebSocket upgrade
            await self._send_error(send, exc.status)
            return True
        length = prepared.length
        if length == 0:
            body: RequestBody | NoBody = NO_BODY
        else:
            body = RequestBody(receive, length)
            try:
                await body.prefetch(self._retry_buffer)
            except ClientGone:
                return False
            if length is None and not body.more and not body.size:
                body = NO_BODY              # it was empty after all
        if not self._ready:
            await self.ready()
        method = scope["method"]
        exchange = Exchange(self._forwarder, method, method.encode("ascii"), prepared.target,
                            prepared.headers, prepared.add_host, body, prepared.key, receive,
                            send)
        exchange.prefer = prepared.prefer
        exchange.secure = prepared.secure
        if record is not None:
            record.exchange = exchange
            record.settle = exchange.settle
        await exchange.run()
        return True

    def _raw_path(self, scope: Scope, path: str) -> bytes:
        """The path to send upstream, as the client spelled it when the server kept that."""
        return self._upstream_path(path, scope.get("raw_path"))

    def _upstream_path(self, path: str, raw: bytes | None) -> bytes:
        """The path to send upstream (``path``: the matched one), as the client spelled it
        when the server kept that (``raw``: the request's raw path, maybe with its query)."""
        if raw:
            if 63 in raw:           # ("?": an int is found faster)
                raw = raw.partition(b"?")[0]
            if self._raw_as_sent:
                return raw
            prefix = self._prefix_bytes
            if raw.startswith(prefix) and (len(raw) == len(prefix) or raw[len(prefix)] == 47):
                return raw[len(prefix):] or b"/"
        return quote_path(path).encode("ascii")

    async def _send_error(self, send: Send, status: int) -> None:
        start, body = self._errors[status]
        await send(start)
        await send(body)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, path: str | None,
                         record: AccessRecord | None = None) -> None:
        """Proxy one WebSocket (:class:`~lbmiddleware.asgi.websocket.Tunnel`); outside the
        prefix with no app, 404. ``record``: its access log line, told of the tunnel."""
        if (await receive())["type"] != "websocket.connect":
            return                  # gone before its handshake reached us
        headers = scope["headers"]
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = self._trusting and self._client_address.is_trusted(peer)
        scheme = scope.get("scheme", "ws")
        secure = client_scheme(
            scheme, BINARY.get(headers, "x-forwarded-proto") if trusted else ()) == "https"
        tunnel = Tunnel(self._forwarder, b"", [], True, scope.get("subprotocols") or (), None,
                        receive, send, denial=DENIAL in (scope.get("extensions") or ()),
                        secure=secure)
        if path is None:
            await tunnel.deny_error(404)
            return
        try:
            # (X-Forwarded-Proto says http or https, as for the same request over HTTP)
            tunnel.headers = upstream_headers = BINARY.request_headers(
                upstream_handshake(headers), peer=peer, scheme=client_scheme(scheme),
                preserve_host=self._preserve_host, trusted_peer=trusted)
            tunnel.target = join_target(b"", self._raw_path(scope, path),
                                        scope.get("query_string"))
        except UnsafeRequest:
            await tunnel.deny_error(400)
            return
        if self._sticky:
            ip = peer
            if self._hash_key == "client_ip" and trusted:
                ip = self._client_address(peer, BINARY.get(headers, "x-forwarded-for"))
            tunnel.key = sticky_key(self._hash_key, ip, headers)
        if self._cookie is not None:
            tunnel.prefer = self._cookie.read_binary(headers)
        tunnel.add_host = not (upstream_headers and upstream_headers[0][0] == b"Host")
        if not self._ready:
            await self.ready()
        if record is not None:
            record.exchange = tunnel
        await tunnel.run()

    async def ready(self) -> bool:
        """Wait, without blocking the loop, for the first answer of each of the pool's
        sources (:meth:`lbmiddleware.Balancer.ready`): True when they all came. The
        lifespan's startup and the first request call it; after that, picks do not."""
        ready = True
        if isinstance(self.balancer, fleet.Balancer):
            ready = await self.balancer.ready()
        self._ready = True          # answered, or timed out: requests go on as they are
        return ready

    @property
    def forwarder(self) -> Forwarder:
        """What every exchange of this middleware shares (retry rule, resend rule, response
        headers, deadline): the gateway's fast server runs its exchanges with it too."""
        return self._forwarder

    def on_close(self, callback: Callable[[], None]) -> None:
        """Have :meth:`aclose` call ``callback`` (once): another front-end of this
        middleware (the gateway's fast server) closes its own upstream connections then, as
        a route retired by a reload goes idle or at the shutdown."""
        self._closers.append(callback)

    async def aclose(self) -> None:
        """Close the idle upstream connections, and stop the sources and health checks of
        the pool this middleware built (not a shared ``balancer=``), without blocking the
        loop; a shared ``balancer=`` is no longer followed; the :meth:`on_close` callbacks
        run. The lifespan's shutdown calls it; idempotent."""
        self._unsubscribe()
        self.upstream.close()
        closers, self._closers = self._closers, []
        for closer in closers:
            closer()
        if self._owns_balancer and isinstance(self.balancer, fleet.Balancer):
            await self.balancer.aclose()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """:meth:`ready` before the startup completes, :meth:`aclose` at shutdown; the app
        sees lifespan as usual (its startup runs while the sources answer)."""
        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.aclose()
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.ready()
            await send(message)

        if self.app is not None:
            await self.app(scope, watched_receive, watched_send)
            return
        while True:
            message = await watched_receive()
            if message["type"] == "lifespan.startup":
                await watched_send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


_HTTP1 = ("1.0", "1.1")


def _forget_departed(middleware: LoadBalancerMiddleware, event: MembershipChanged) -> None:
    """Backends left the balancer: their upstream pools are let go
    (:meth:`~lbmiddleware.upstream.Upstream.forget`: idle connections close on their loop,
    the others as their responses end)."""
    middleware.upstream.forget(event.removed)


def _asgi_error(status: int) -> tuple[Message, Message]:
    error = error_response(status)
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in error.headers]
    return ({"type": "http.response.start", "status": error.status, "headers": headers},
            {"type": "http.response.body", "body": error.body, "more_body": False})
