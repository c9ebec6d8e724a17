"""One proxied request of the ASGI middleware: the attempts, the response, the outcomes.

The attempts run the core's loop (:class:`lbmiddleware.core.attempts.Attempts`), which
decides what is retried and reports each attempt exactly once; this module does the I/O:
it sends the request through the upstream pool, turns what came back into an
:class:`~lbmiddleware.core.attempts.Outcome` (the upstream client's errors already say
whether the request was sent and whether it timed out), streams the response to the
client and watches for the client leaving. With a deadline (``LB_TIMEOUT``) each attempt
gets the time left up to its response head (the upstream pool's ``head_timeout``), and an
attempt the deadline cut says so (``Attempts.deadline_text``). Each outcome carries the
request body bytes written and the response body bytes passed on (a failed attempt's and a
departed client's too), which the ``bandwidth`` policy counts.

Request bodies up to ``retry_buffer`` bytes are held in memory (:class:`RequestBody`), so
a retry can send them again; a larger body is streamed and is not replayable once it has
started to go upstream (a connect failure, before any byte is sent, is still retried).

A client that disconnects cancels the exchange (its upstream connection is closed, the
attempt released): while the body streams this is noticed at once, while waiting for the
response head within about :data:`WATCH_DELAY` seconds, and while the response streams at
once (also when the backend answered before the upload ended). Watching costs a task, so a
quick exchange never starts one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from ..core.attempts import NO_BACKEND_STATUS, Attempts, Outcome, RetryRule
from ..core.backend import Backend
from ..core.balancer import Balancer
from ..errors import NoHealthyBackend
from ..proxy import BINARY, StickyCookie
from ..proxy.redirects import RedirectRule
from ..upstream import (
    NO_BODY_STATUSES,
    Response,
    Upstream,
    UpstreamError,
)
from ..upstream.deadlines import Deadlines
from ..upstream.errors import failure_text

__all__ = ["Forwarder", "Exchange", "RequestBody", "NoBody", "NO_BODY", "ClientGone",
           "WATCH_DELAY"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WATCH_DELAY = 0.5     # seconds waiting for a response head before watching for a disconnect

# Asked of the retry rule before each attempt: may the upstream pool send the request once
# more, on a fresh connection, when a reused one turns out closed by the backend?
_RESENT = Outcome(ok=False, sent=True)

# At most this many methods' answers to that question are kept (a client may send any
# token as a method; the standard ones and a few extensions fit).
_RESEND_CACHE_SIZE = 32


class ClientGone(Exception):
    """The client disconnected."""


class _BrokeOff(Exception):
    """The response body broke off (``error``, the upstream client's) once its head and
    ``received`` of its bytes had gone to the client."""

    def __init__(self, error: UpstreamError, received: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.received = received


class Forwarder:
    """What every exchange of one middleware shares, built once: the balancer, the upstream
    pool, the retry rule, the deadline timers, the error responses (ASGI messages), the
    sticky cookie (``None``: off), the request deadline (``timeout`` seconds, 0: off) and
    the route's redirect rule (``redirects``: a backend's ``Location`` pointing at itself is
    rewritten to the client's origin and the route's prefix; the default puts no prefix
    back)."""

    __slots__ = ("balancer", "upstream", "rule", "deadlines", "errors", "cookie", "timeout",
                 "redirects", "_resend")

    def __init__(self, balancer: Balancer, upstream: Upstream, rule: RetryRule,
                 deadlines: Deadlines, errors: Mapping[int, tuple[Message, Message]], *,
                 cookie: StickyCookie | None = None, timeout: float = 0.0,
                 redirects: RedirectRule | None = None) -> None:
        self.balancer = balancer
        self.upstream = upstream
        self.rule = rule
        self.deadlines = deadlines
        self.errors = errors
        self.cookie = cookie
        self.timeout = timeout
        self.redirects = RedirectRule() if redirects is None else redirects
        # method -> the rule's answer for a replayable body (the rule is immutable)
        self._resend: dict[str, bool] = {}

    def may_resend(self, method: str, replayable: bool) -> bool:
        """The retry rule's answer to: may the upstream pool send this request once more,
        on a fresh connection, when a reused one turns out closed by the backend? It
        depends on the method and the body alone, so it is asked once per method."""
        if not replayable:
            return self.rule.allows(method, _RESENT, replayable=False)
        allowed = self._resend.get(method)
        if allowed is None:
            allowed = self.rule.allows(method, _RESENT)
            if len(self._resend) < _RESEND_CACHE_SIZE:
                self._resend[method] = allowed
        return allowed

    def response_headers(self, status: int, headers: Sequence[tuple[bytes, bytes]],
                         backend: Backend, request_headers: Sequence[tuple[bytes, bytes]],
                         prefer: str | None, secure: bool) -> list[tuple[bytes, bytes]]:
        """The headers the client gets with ``backend``'s response (``status``, ``headers``
        as they came, names in any case): the response rules (hop-by-hop headers dropped,
        the backend's ``Date`` and ``Server`` left to the server in front, its redirects to
        itself rewritten to the client's origin, read from the upstream request's
        ``request_headers``), no ``Content-Length`` on a status without a body, and the
        sticky cookie's ``Set-Cookie`` when the request's cookie (``prefer``) did not name
        ``backend`` (``secure``: the client's scheme is https). Names as they came: the ASGI
        exchange lower-cases them. One step for every front-end of the middleware (the ASGI
        exchange, the gateway's fast server)."""
        out = BINARY.response_headers(headers, self.redirects, backend, request_headers)
        if status in NO_BODY_STATUSES:
            # A 304 may state its 200's length (RFC 9110 8.6); a server that checks the body
            # against it (uvicorn) would cut the connection: no body, no length.
            out = [(name, value) for name, value in out if name.lower() != b"content-length"]
        cookie = self.cookie
        if cookie is not None:
            header = cookie.renewal(self.balancer.sticky_value(backend), prefer, secure=secure)
            if header is not None:
                out.append((b"set-cookie", header.encode("latin-1")))
        return out

    async def send_error(self, send: Send, status: int) -> None:
        start, body = self.errors[status]
        await send(start)
        await send(body)


class RequestBody:
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
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
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

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started = True
        for chunk in self.chunks:
            yield chunk
        self.chunks = []
        while self.more:
            yield self._take(await self.receive())
        if self.on_end is not None:
            self.on_end()                # now a disconnect can be watched for


class NoBody:
    """The body of a request whose framing says it has none (shared, never changes)."""

    __slots__ = ()
    length = 0
    more = False
    replayable = True
    on_end = None

    @staticmethod
    def source() -> tuple[bytes, int]:
        return b"", 0


NO_BODY = NoBody()


class Exchange:
    """One proxied request: key (given), attempts, forward, outcome, then the response."""

    __slots__ = ("forwarder", "method", "method_bytes", "target", "headers", "add_host",
                 "body", "key", "receive", "send", "watch_task", "gone", "finished", "task",
                 "attempts", "prefer", "secure", "received")

    def __init__(self, forwarder: Forwarder, method: str, method_bytes: bytes,
                 target: bytes, headers: list[tuple[bytes, bytes]], add_host: bool,
                 body: RequestBody | NoBody, key: str | None, receive: Receive,
                 send: Send) -> None:
        self.forwarder = forwarder
        self.add_host = add_host
        self.method = method
        self.method_bytes = method_bytes
        self.target = target
        self.headers = headers
        self.body = body
        self.key = key
        self.receive = receive
        self.send = send
        self.watch_task: asyncio.Future[None] | None = None
        self.gone = False
        self.finished = False
        self.task: asyncio.Task[Any] | None = None
        self.attempts: Attempts | None = None      # the backends tried (the access log's)
        self.prefer: str | None = None      # the request's sticky cookie value
        self.secure = False                 # the client's scheme is https (the cookie's)
        self.received = 0                   # response body bytes passed to the client

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self.gone:
                raise
            task = self.task
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()         # our own cancellation: the client left
        except ClientGone:
            pass
        finally:
            self.finished = True
            watch = self.watch_task
            if watch is not None and not watch.done():
                watch.cancel()

    async def _run(self) -> None:
        forwarder = self.forwarder
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(loop)
        self.attempts = attempts = Attempts(forwarder.balancer, forwarder.rule, self.method,
                                            self.key, prefer=self.prefer,
                                            timeout=forwarder.timeout)
        try:
            backend = attempts.start()
        except NoHealthyBackend:
            await forwarder.send_error(self.send, NO_BACKEND_STATUS)
            return
        with attempts:      # a cancellation, a client gone: the open attempt is released
            while True:
                response, outcome = await self._forward(backend, loop, attempts)
                if outcome.ok:
                    break
                following = attempts.retry(outcome, replayable=self.body.replayable)
                if following is None:
                    break
                if response is not None:
                    response.close()            # another backend gets a chance
                backend = following
            if response is None:
                await forwarder.send_error(self.send, Attempts.answer_status(outcome))
                return
            try:
                await self._respond(response, backend)
            except _BrokeOff as broke:
                # The head went out, the body broke: the client sees a cut response, and the
                # backend a failure that no retry can follow (its failed-attempt line says so).
                attempts.broke_off(outcome, broke.received,
                                   failure_text(broke.error, forwarder.upstream.pool(backend)),
                                   timeout=broke.error.timeout)
                return
            except BaseException:
                response.close()
                if self.gone:       # left after the head: the backend did its part
                    attempts.client_left(outcome, self.received)
                raise
            attempts.delivered(outcome, self.received)

    async def _forward(self, backend: Backend, loop: asyncio.AbstractEventLoop,
                       attempts: Attempts) -> tuple[Response | None, Outcome]:
        """One attempt on ``backend``: its response head (``None`` if it failed without
        one) and the attempt's outcome. With a deadline, the time left bounds the attempt
        up to the response head (the connect, the upload and the wait together)."""
        forwarder = self.forwarder
        body = self.body
        pool = forwarder.upstream.pool(backend)
        data, length = body.source()
        timer = None
        if not body.more and self.watch_task is None:
            timer = forwarder.deadlines.start(WATCH_DELAY, _start_watch, self, loop)
        elif body.more:
            body.on_end = self._watch     # watch once the upload is all read
        left = attempts.time_left()
        started = time.monotonic()
        try:
            response = await pool.request(
                self.method_bytes, pool.base_path + self.target, self.headers, data, length,
                replayable=forwarder.may_resend(self.method, body.replayable),
                add_host=self.add_host, head_timeout=left, loop=loop)
        except UpstreamError as exc:
            if self.gone:
                raise ClientGone() from exc
            return None, attempts.failed(exc, time.monotonic() - started,
                                         failure_text(exc, pool))
        finally:
            if timer is not None:
                forwarder.deadlines.cancel(timer)
        return response, forwarder.rule.outcome(response.status, time.monotonic() - started,
                                                bytes_sent=response.bytes_sent)

    async def _respond(self, response: Response, backend: Backend) -> None:
        """Send ``response`` (``backend``'s) to the client, its headers by
        :meth:`Forwarder.response_headers`, counting the body bytes passed on
        (``received``). Raises :class:`_BrokeOff` when the backend's body fails on its
        way."""
        send = self.send
        # ASGI header names are lower-case (Starlette's Headers, GZipMiddleware rely on it).
        headers = [(name.lower(), value) for name, value in self.forwarder.response_headers(
            response.status, response.headers, backend, self.headers, self.prefer, self.secure)]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        chunk = response.take()
        if response.complete:
            self.finished = True
            self.received = len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            return
        self._watch()
        while True:
            if chunk:
                self.received += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            try:
                chunk = await response.read()
            except UpstreamError as exc:
                raise _BrokeOff(exc, self.received) from exc
            if not chunk:
                break
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- the client's disconnect -------------------------------------------------------

    async def settle(self) -> None:
        """Hear a client that has already left, before the response's start goes out (for
        the access log: a server drops what is sent to a client gone without a word, as
        uvicorn does, so the status sent is not the status the client got): the watch for
        the disconnect starts now, if it has not, and runs one turn of the loop. A client
        gone cancels the exchange there (:meth:`run`: 499 in its line)."""
        if self.watch_task is None and not self.finished:
            self._watch()
            await asyncio.sleep(0)

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


def _start_watch(exchange: Exchange) -> None:
    exchange._watch()

