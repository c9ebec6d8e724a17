"""ASGI middleware: requests under a prefix are reverse-proxied to a pool of backends.

Plain ASGI (no ``BaseHTTPMiddleware``), so it works with ``app.add_middleware`` in
Starlette and FastAPI, or alone (``app=None``) as the gateway's whole application::

    app.add_middleware(lb.LoadBalancerMiddleware, prefix="/api",
                       backends=["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
                       policy="ip_hash", trusted_proxies=["10.0.0.0/8"])
    app.add_middleware(lb.LoadBalancerMiddleware)      # every setting from LB_* variables

Per request: match the prefix, turn the scope into an upstream head with the rules of
:mod:`lbmiddleware.proxy`, pick a backend, send through the keep-alive pool of
:mod:`lbmiddleware.upstream`, retry while nothing has reached the client, then stream the
response back and report the outcome to the balancer.

Request bodies up to ``retry_buffer`` bytes [64 KiB] are held in memory so a retry can
send them again; a larger body is streamed and is not replayable once it has started to
go upstream (a connect failure, before any byte is sent, is still retried).

WebSockets are not proxied: a handshake under the prefix (an HTTP request with ``Upgrade:
websocket``, or a ``websocket`` scope) gets 501; other websocket scopes go to the app.

A client that disconnects cancels the upstream exchange (its connection is closed, the
pick released): while the body streams this is noticed at once, while waiting for the
response head within about :data:`WATCH_DELAY` seconds, and while the response streams at
once (also when the backend answered before the upload ended). Watching costs a task, so a
quick exchange never starts one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping, MutableMapping

from ..core.balancer import Balancer
from ..errors import NoHealthyBackend
from ..proxy import (BINARY, ClientAddress, UnsafeRequest, error_response, join_target,
                    match_prefix, may_retry, quote_path, sticky_key)
from ..proxy.settings import ProxySettings
from ..upstream.deadlines import Deadlines
from ..upstream import NO_BODY_STATUSES, Response, Upstream, UpstreamError

__all__ = ["LoadBalancerMiddleware"]

logger = logging.getLogger("lbmiddleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WATCH_DELAY = 0.5     # seconds waiting for a response head before watching for a disconnect


class _ClientGone(Exception):
    """The client disconnected."""


class LoadBalancerMiddleware:
    """Reverse-proxy requests under ``prefix`` to a load-balanced pool of backends.

    Keyword arguments are the fields of :class:`~lbmiddleware.proxy_settings.ProxySettings`
    (``backends``, ``policy``, ``prefix``, ``strip_prefix``, ``trusted_proxies``, ...).
    Without ``backends`` every setting not given comes from ``LB_*`` variables
    (``environ`` for tests). ``settings=`` passes a ready ``ProxySettings``;
    ``balancer=`` shares a :class:`Balancer` (its settings then are the core settings).
    ``app`` may be ``None``: requests outside the prefix then get 404 (websockets a 501).
    """

    def __init__(self, app: ASGIApp | None = None, *, settings: ProxySettings | None = None,
                 balancer: Balancer | None = None, environ: Mapping[str, str] | None = None,
                 upstream: Upstream | None = None, **options: Any) -> None:
        self.app = app
        if settings is None:
            settings = _settings(balancer, environ, options)
        elif options:
            settings = settings.replace(**options)
        self.settings = settings
        self.balancer = balancer if balancer is not None else Balancer(settings=settings)
        self.upstream = upstream if upstream is not None else Upstream(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
        self._prefix = settings.prefix
        self._prefix_bytes = settings.prefix.encode("utf-8")
        self._strip = settings.strip_prefix
        self._preserve_host = settings.preserve_host
        self._client_address = ClientAddress(settings.trusted_proxies)
        self._trusting = bool(settings.trusted_proxies)
        self._sticky = settings.policy == "ip_hash"
        self._hash_key = settings.hash_key
        self._retries = settings.retries
        self._fail_statuses = settings.fail_statuses
        self._retry_buffer = settings.retry_buffer
        self._retry_non_idempotent = settings.retry_non_idempotent
        self._errors = {status: _asgi_error(status) for status in (400, 404, 501, 502, 503, 504)}
        self._deadlines = Deadlines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = match_prefix(self._prefix, scope["path"], self._strip)
            if path is not None:
                await self._proxy(scope, receive, send, path)
            elif self.app is not None:
                await self.app(scope, receive, send)
            else:
                await self._send_error(send, 404)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket" and (
                self.app is None or match_prefix(self._prefix, scope["path"]) is not None):
            await self._refuse_websocket(scope, send)
        elif self.app is not None:
            await self.app(scope, receive, send)

    # -- the proxy ----------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        headers = scope["headers"]
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = self._trusting and self._client_address.is_trusted(peer)
        method = scope["method"]
        try:
            upstream_headers = BINARY.request_headers(
                headers, peer=peer, scheme=scope.get("scheme", "http"),
                preserve_host=self._preserve_host, trusted_peer=trusted)
            length = BINARY.body_length(headers)
            if length == 0 and scope.get("http_version", "1.1") not in _HTTP1 \
                    and not BINARY.get(headers, "content-length"):
                length = None       # HTTP/2 and 3 frame a body without either header
            target = join_target(b"", self._raw_path(scope, path), scope.get("query_string"))
        except UnsafeRequest as exc:         # 400, or 501 for a WebSocket upgrade
            await self._send_error(send, exc.status)
            return
        key = None
        if self._sticky:
            ip = peer
            if self._hash_key == "client_ip" and trusted:
                ip = self._client_address(peer, BINARY.get(headers, "x-forwarded-for"))
            key = sticky_key(self._hash_key, ip, headers)
        if length == 0:
            body = _NO_BODY
        else:
            body = _RequestBody(receive, length)
            try:
                await body.prefetch(self._retry_buffer)
            except _ClientGone:
                return
            if length is None and not body.more and not body.size:
                body = _NO_BODY             # it was empty after all
        add_host = not (upstream_headers and upstream_headers[0][0] == b"Host")
        exchange = _Exchange(self, method, method.encode("ascii"), target, upstream_headers,
                             add_host, body, key, receive, send)
        await exchange.run()

    def _raw_path(self, scope: Scope, path: str) -> bytes:
        """The path to send upstream, as the client spelled it when the server kept that."""
        raw = scope.get("raw_path")
        if raw:
            raw = raw.partition(b"?")[0]
            if not self._strip or self._prefix == "/":
                return raw
            prefix = self._prefix_bytes
            if raw.startswith(prefix) and (len(raw) == len(prefix) or raw[len(prefix)] == 47):
                return raw[len(prefix):] or b"/"
        return quote_path(path).encode("ascii")

    def _may_retry(self, method: str, sent: bool, replayable: bool) -> bool:
        return may_retry(method, sent=sent, replayable=replayable,
                         retry_non_idempotent=self._retry_non_idempotent)

    async def _send_error(self, send: Send, status: int) -> None:
        start, body = self._errors[status]
        await send(start)
        await send(body)

    async def _refuse_websocket(self, scope: Scope, send: Send) -> None:
        """Deny a WebSocket (they are not proxied yet): the 501 response where the server
        has the ASGI denial-response extension, else a close before the handshake."""
        if "websocket.http.response" in (scope.get("extensions") or ()):
            start, body = self._errors[501]
            await send({**start, "type": "websocket.http.response.start"})
            await send({**body, "type": "websocket.http.response.body"})
        else:
            await send({"type": "websocket.close", "code": 1000,
                        "reason": "WebSockets are not proxied"})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Close idle upstream connections at shutdown; the app sees lifespan as usual."""
        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.upstream.close()
            return message

        if self.app is not None:
            await self.app(scope, watched_receive, send)
            return
        while True:
            message = await watched_receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


_HTTP1 = ("1.0", "1.1")


class _RequestBody:
    """The client's request body: held in memory when small (replayable), else streamed."""

    __slots__ = ("receive", "length", "chunks", "size", "more", "started", "on_end")

    def __init__(self, receive: Receive, length: int | None) -> None:
        self.receive = receive
        self.length = length            # 0 (none), a byte count, or None (chunked)
        self.chunks: list[bytes] = []
        self.size = 0
        self.more = length != 0         # more to receive from the client
        self.started = False            # the streamed part has begun to go upstream
        self.on_end: Callable[[], None] | None = None   # called once a streamed body ends

    async def prefetch(self, limit: int) -> None:
        """Receive until the body ends or ``limit`` bytes are held."""
        while self.more and self.size <= limit:
            self._take(await self.receive())

    def _take(self, message: Message) -> bytes:
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        self.more = message.get("more_body", False)
        if chunk and not self.started:
            self.chunks.append(chunk)
            self.size += len(chunk)
        return chunk

    @property
    def replayable(self) -> bool:
        return not self.started

    def source(self) -> tuple[Any, int | None]:
        """What to hand the upstream client: ``(bytes or async iterator, length)``."""
        if not self.more:
            data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
            return data, len(data) if self.length is None else self.length
        return self._stream(), self.length

    async def _stream(self):
        self.started = True
        for chunk in self.chunks:
            yield chunk
        self.chunks = []
        while self.more:
            yield self._take(await self.receive())
        if self.on_end is not None:
            self.on_end()                # now a disconnect can be watched for


class _NoBody:
    """The body of a request whose framing says it has none (shared, never changes)."""

    __slots__ = ()
    length = 0
    more = False
    replayable = True

    @staticmethod
    def source() -> tuple[bytes, int]:
        return b"", 0


_NO_BODY = _NoBody()


class _Exchange:
    """One proxied request: attempts, retries, the response and the outcome reports."""

    __slots__ = ("mw", "method", "method_bytes", "target", "headers", "add_host", "body", "key",
                 "receive", "send", "watch_task", "gone", "finished", "task")

    def __init__(self, mw: LoadBalancerMiddleware, method: str, method_bytes: bytes,
                 target: bytes, headers: list, add_host: bool, body: _RequestBody | _NoBody,
                 key: str | None, receive: Receive, send: Send) -> None:
        self.mw = mw
        self.add_host = add_host
        self.method = method
        self.method_bytes = method_bytes
        self.target = target
        self.headers = headers
        self.body = body
        self.key = key
        self.receive = receive
        self.send = send
        self.watch_task: asyncio.Task | None = None
        self.gone = False
        self.finished = False
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self.gone:
                raise
            task = self.task
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()         # our own cancellation: the client left
        except _ClientGone:
            pass
        finally:
            self.finished = True
            watch = self.watch_task
            if watch is not None and not watch.done():
                watch.cancel()

    async def _run(self) -> None:
        mw = self.mw
        balancer = mw.balancer
        tried: list = []
        error: UpstreamError | None = None
        response: Response | None = None
        backend: Any = None
        latency = 0.0
        deadlines = mw._deadlines
        failed: Response | None = None     # a failure-status response kept for the client
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(loop)
        for attempt in range(mw._retries + 1):
            try:
                backend = balancer.pick(self.key, exclude=tried)
            except NoHealthyBackend:
                if not tried:
                    await mw._send_error(self.send, 503)
                    return
                break
            if failed is not None:
                failed.close()              # another backend gets a chance
                failed = None
            tried.append(backend)
            pool = mw.upstream.pool(backend)
            data, length = self.body.source()
            timer = None
            if not self.body.more and self.watch_task is None:
                timer = deadlines.start(WATCH_DELAY, _start_watch, self, loop)
            elif self.body.more:
                self.body.on_end = self._watch     # watch once the upload is all read
            started = time.monotonic()
            try:
                response = await pool.request(
                    self.method_bytes, pool.base_path + self.target, self.headers, data, length,
                    replayable=self.body.replayable and mw._may_retry(self.method, True, True),
                    add_host=self.add_host, loop=loop)
            except UpstreamError as exc:
                if self.gone:
                    balancer.release(backend)
                    return
                balancer.report(backend, ok=False, latency=time.monotonic() - started)
                error = exc
                if attempt < mw._retries and mw._may_retry(self.method, exc.sent,
                                                           self.body.replayable):
                    continue
                break
            except BaseException:
                balancer.release(backend)
                raise
            finally:
                if timer is not None:
                    deadlines.cancel(timer)
            error = None
            latency = time.monotonic() - started
            if response.status in mw._fail_statuses:
                balancer.report(backend, ok=False, latency=latency)
                if attempt < mw._retries and mw._may_retry(self.method, True,
                                                           self.body.replayable):
                    failed, response = response, None
                    continue
            break
        if response is None and error is None:
            response = failed
        if response is None:
            await mw._send_error(self.send, 504 if error is not None and error.timeout else 502)
            return
        ok = response.status not in mw._fail_statuses
        reported = not ok           # a failure status was reported above
        try:
            await self._respond(response)
        except UpstreamError:
            # The head went out, the body broke: the client sees a cut response.
            if not reported:
                balancer.report(backend, ok=False)
            logger.warning("the response body from %s broke off", backend.url)
            return
        except BaseException:
            response.close()
            if not reported:
                if self.gone:       # left after the head: the backend did its part
                    balancer.report(backend, ok=True, latency=latency)
                else:
                    balancer.release(backend)
            raise
        if not reported:
            balancer.report(backend, ok=True, latency=latency)

    async def _respond(self, response: Response) -> None:
        send = self.send
        # ASGI header names are lower-case (Starlette's Headers, GZipMiddleware rely on it).
        headers = [(name.lower(), value) for name, value in BINARY.response_headers(response.headers)]
        if response.status in NO_BODY_STATUSES:
            # A 304 may state its 200's length (RFC 9110 8.6); a server that checks the body
            # against it (uvicorn) would cut the connection: no body, no length.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        chunk = response.take()
        if response.complete:
            self.finished = True
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            return
        self._watch()
        while True:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await response.read()
            if not chunk:
                break
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- the client's disconnect -------------------------------------------------------

    def _watch(self) -> None:
        """Start watching ``receive`` for the client's disconnect (once), when nothing else
        reads it: the body has been read, or the response came before its end (the
        upstream client then stops sending it, and the watch drops the rest)."""
        if self.watch_task is None and not self.finished:
            self.watch_task = asyncio.ensure_future(self._watch_receive())

    async def _watch_receive(self) -> None:
        while not self.finished:
            message = await self.receive()      # "http.request": an unsent upload's rest
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.gone = True
                    if self.task is not None:
                        self.task.cancel()
                return


def _start_watch(exchange: _Exchange) -> None:
    exchange._watch()


def _asgi_error(status: int) -> tuple[Message, Message]:
    error = error_response(status)
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in error.headers]
    return ({"type": "http.response.start", "status": error.status, "headers": headers},
            {"type": "http.response.body", "body": error.body, "more_body": False})


def _settings(balancer: Balancer | None, environ: Mapping[str, str] | None,
              options: dict) -> ProxySettings:
    """ProxySettings from keyword arguments, a shared balancer's settings or LB_* variables."""
    if balancer is not None:
        return ProxySettings.sharing(balancer.settings, **options)
    if "backends" in options:
        return ProxySettings(**options)
    return ProxySettings.from_env(environ, **options)
