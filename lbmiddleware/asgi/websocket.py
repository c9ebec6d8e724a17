"""One proxied WebSocket of the ASGI middleware: the handshake's attempts, the relay, the
outcome at the close.

The ASGI server terminates the client's WebSocket and hands the application messages, not
frames (the ``websocket`` scope), so the proxy re-frames: each ``websocket.receive`` is
one message sent upstream through :mod:`lbmiddleware.upstream.websocket`, and each whole
message from the backend one ``websocket.send``. Pings are each side's own: the client's
are answered by its server (ASGI does not show them), the backend's by the upstream client.

* **The handshake** runs the core's attempt loop (:class:`~lbmiddleware.core.attempts.
  Attempts`, method ``GET``), before the client's handshake is answered: a refused or timed
  out connect, a broken or invalid answer, or a status in ``fail_statuses`` fails the
  attempt, and it is retried on another backend as the retry rule says. The first pick
  prefers the sticky cookie's backend; ``LB_TIMEOUT`` bounds the attempts together. A
  client that leaves meanwhile cancels them within about half a second (as an HTTP
  request's wait for a head; granian gives no disconnect before the accept).
* **A backend's answer other than 101** (a 403, a 404) is passed to the client as it came,
  with the ASGI denial-response extension (``websocket.http.response``) where the server
  has it; the proxy's own 502, 503 or 504 likewise. Without the extension the socket is
  closed before its handshake (the server answers 403): code 1008 for a backend's refusal,
  1011 for a failure, the reason naming the status.
* **Accepted**: ``websocket.accept`` carries the backend's chosen subprotocol and the
  headers of its ``101`` (its ``Set-Cookie``; hop-by-hop and handshake headers dropped;
  like a refusal's, its redirects to itself rewritten as an HTTP response's are),
  plus the sticky cookie's ``Set-Cookie`` when it named another backend. Then messages
  both ways, each direction awaiting the other side's drain before reading the next
  (backpressure: the upstream client stops reading its socket while 256 KiB wait).
* **The close**, whoever starts it, goes to the other side with its code and reason (1000,
  1001, 1011, 4000-4999 ...). A client gone without a close (1006), or closing without a
  code (1005: how some servers report a client gone), closes the upstream with 1001
  (going away); a backend gone without one, or breaking the protocol, closes the
  client with 1011 (internal error) and is the backend's failure, reported as a broken
  body is. The pick stays in flight until the close (``least_conn`` sees open sockets);
  its outcome, with the handshake's time as its latency, is reported then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeVar

from ..core.attempts import Attempts, Outcome
from ..core.backend import Backend
from ..errors import NoHealthyBackend
from ..proxy import BINARY
from ..upstream import UpstreamError
from ..upstream.errors import failure_text
from ..upstream.websocket import (
    ABNORMAL,
    GOING_AWAY,
    NO_STATUS,
    NORMAL,
    Closed,
    Refusal,
    WebSocket,
    open_websocket,
)
from .exchange import WATCH_DELAY, Forwarder

__all__ = ["Tunnel", "DENIAL", "upstream_headers", "deny", "deny_error"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The ASGI extension that lets an application answer a handshake with an HTTP response.
DENIAL = "websocket.http.response"

INTERNAL_ERROR = 1011
POLICY_VIOLATION = 1008

# Headers of the client's handshake that are not forwarded: the upstream client makes its
# own (Upgrade, the key, the version, the extensions and the subprotocols it offers).
_CLIENT_HANDSHAKE = frozenset({b"upgrade", b"sec-websocket-key", b"sec-websocket-version",
                               b"sec-websocket-extensions", b"sec-websocket-protocol",
                               b"sec-websocket-accept"})
# Headers of the backend's 101 not passed on: the client's server writes its own handshake
# (and its own Date and Server).
_ACCEPT_DROPPED = frozenset({b"sec-websocket-accept", b"sec-websocket-protocol",
                             b"sec-websocket-extensions", b"content-length", b"date",
                             b"server"})

# The client's close codes that say it is gone, not why: 1001 upstream.
_GONE = frozenset({ABNORMAL, NO_STATUS})

# Why an open WebSocket's failure is not retried, in its failed-attempt line.
_WAS_OPEN = "the WebSocket was open (its client had been answered)"


def upstream_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's handshake headers without those the upstream client makes itself;
    ``Connection`` stays, for the proxy rules to drop what it names."""
    return [(name, value) for name, value in headers if name.lower() not in _CLIENT_HANDSHAKE]


async def deny(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
               reason: str, *, denial: bool) -> None:
    """Answer a WebSocket handshake ``status`` without accepting it: the response where
    the server has the denial extension (``denial``: :data:`DENIAL` is in the scope's
    extensions), else a close before the handshake (the server answers 403) with 1011 for
    a failure (5xx), 1008 for a refusal, and ``reason``."""
    if denial:
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "reason": reason,
                    "code": INTERNAL_ERROR if status >= 500 else POLICY_VIOLATION})


async def deny_error(send: Send, error: tuple[Message, Message], *, denial: bool) -> None:
    """Answer a WebSocket handshake with the proxy's own ``error`` (the ASGI messages of
    its HTTP response: start and body, as the middleware and the gateway's router keep
    them): :func:`deny`, its one-line body the close's reason."""
    start, body = error
    text: bytes = body["body"]
    await deny(send, start["status"], start["headers"], text,
               text.decode("utf-8").strip(), denial=denial)


class Tunnel:
    """One proxied WebSocket: the handshake's attempts, then the relay (see the module)."""

    __slots__ = ("forwarder", "target", "headers", "add_host", "subprotocols", "key",
                 "receive", "send", "denial", "prefer", "secure", "attempts", "gone", "first")

    def __init__(self, forwarder: Forwarder, target: bytes, headers: list[tuple[bytes, bytes]],
                 add_host: bool, subprotocols: Sequence[str], key: str | None,
                 receive: Receive, send: Send, *, denial: bool = False,
                 prefer: str | None = None, secure: bool = False) -> None:
        self.forwarder = forwarder
        self.target = target
        self.headers = headers
        self.add_host = add_host
        self.subprotocols = subprotocols
        self.key = key
        self.receive = receive
        self.send = send
        self.denial = denial            # the server has the denial-response extension
        self.prefer = prefer            # the sticky cookie's value
        self.secure = secure            # the client's scheme is https (the cookie's)
        self.attempts: Attempts | None = None   # the backends tried (the access log's)
        self.gone = False               # the client left before it was answered
        self.first: asyncio.Future[Message] | None = None   # receive() read while waiting

    async def run(self) -> None:
        forwarder = self.forwarder
        loop = asyncio.get_running_loop()
        self.attempts = attempts = Attempts(forwarder.balancer, forwarder.rule, "GET", self.key,
                                            prefer=self.prefer, timeout=forwarder.timeout)
        try:
            backend = attempts.start()
        except NoHealthyBackend:
            await self.deny_error(503)
            return
        # A client that leaves while the handshake runs (a slow backend) cancels it: as
        # for an HTTP request, ``receive`` is watched once WATCH_DELAY has passed without
        # an answer (a quick handshake costs no task). Before the accept its server has
        # only a disconnect to give; a message read then is the relay's first.
        handshake = loop.create_task(self._handshake(backend, loop, attempts))
        timer = loop.call_later(WATCH_DELAY, self._watch, handshake)
        try:
            with attempts:  # a cancellation, an error of ours: the open attempt is released
                try:
                    await asyncio.wait((handshake,))
                finally:
                    timer.cancel()
                    if not handshake.done():
                        handshake.cancel()
                        await asyncio.wait((handshake,))
                if self.gone:
                    if not handshake.cancelled() and handshake.exception() is None:
                        left = handshake.result()[0]
                        if isinstance(left, WebSocket):
                            left.abort()
                    attempts.release()      # no outcome: the backend did not fail
                    return
                answer, backend, outcome = handshake.result()
                if answer is None:
                    await self.deny_error(504 if outcome.timeout else 502)
                    return
                if isinstance(answer, Refusal):
                    await self._refuse(answer, backend)
                    attempts.end(outcome)
                    return
                await self._relay(answer, backend, attempts, outcome, loop)
        finally:
            first = self.first
            if first is not None and not first.done():
                first.cancel()

    def _watch(self, handshake: asyncio.Task[Any]) -> None:
        """Read the client's next message while ``handshake`` runs: a disconnect cancels
        it (the client is :attr:`gone`)."""
        def read(first: asyncio.Future[Message]) -> None:
            if first.cancelled() or first.exception() is not None:
                return
            if first.result()["type"] == "websocket.disconnect" and not handshake.done():
                self.gone = True
                handshake.cancel()

        self.first = first = asyncio.ensure_future(self.receive())
        first.add_done_callback(read)

    async def _handshake(self, backend: Backend, loop: asyncio.AbstractEventLoop,
                         attempts: Attempts
                         ) -> tuple[WebSocket | Refusal | None, Backend, Outcome]:
        """The attempts (:meth:`_open`, retried as the rule says): the last answer, its
        backend and its outcome."""
        while True:
            answer, outcome = await self._open(backend, loop, attempts)
            if outcome.ok:
                break
            following = attempts.retry(outcome)
            if following is None:
                break
            if isinstance(answer, WebSocket):
                answer.abort()          # (an answer is a Refusal when it fails: never)
            backend = following
        return answer, backend, outcome

    async def _open(self, backend: Backend, loop: asyncio.AbstractEventLoop,
                    attempts: Attempts) -> tuple[WebSocket | Refusal | None, Outcome]:
        """One handshake on ``backend``: the open socket or the backend's refusal (``None``
        when it failed without an answer), and the attempt's outcome."""
        forwarder = self.forwarder
        pool = forwarder.upstream.pool(backend)
        started = time.monotonic()
        try:
            answer = await open_websocket(pool, pool.base_path + self.target, self.headers,
                                          self.subprotocols, add_host=self.add_host,
                                          head_timeout=attempts.time_left(), loop=loop)
        except UpstreamError as exc:
            return None, Outcome(ok=False, latency=time.monotonic() - started, sent=exc.sent,
                                 timeout=exc.timeout,
                                 error=(attempts.deadline_text() if exc.deadline
                                        else failure_text(exc, pool)))
        status = 101 if isinstance(answer, WebSocket) else answer.status
        return answer, forwarder.rule.outcome(status, time.monotonic() - started)

    # -- answers without a WebSocket ----------------------------------------------------

    async def deny_error(self, status: int) -> None:
        """The proxy's own answer ``status`` (400, 404, 502, 503, 504) to the handshake."""
        await deny_error(self.send, self.forwarder.errors[status], denial=self.denial)

    async def _refuse(self, refusal: Refusal, backend: Backend) -> None:
        """Pass on the backend's answer to the handshake (with the sticky cookie's header),
        by the response rules: its redirects to itself rewritten, as an HTTP answer's."""
        rewrite = self.forwarder.redirects.bind(backend, self.headers)
        headers = [(name.lower(), value)
                   for name, value in BINARY.response_headers(refusal.headers, rewrite)]
        cookie = self._set_cookie(backend)
        if cookie is not None:
            headers.append(cookie)
        reason = refusal.reason.decode("latin-1")[:80]
        await deny(self.send, refusal.status, headers, refusal.body,
                   f"the backend answered {refusal.status} {reason}".rstrip(),
                   denial=self.denial)

    def _set_cookie(self, backend: Backend) -> tuple[bytes, bytes] | None:
        """The sticky cookie's ``Set-Cookie`` header for ``backend``, when the client's
        cookie did not name it."""
        cookie = self.forwarder.cookie
        if cookie is None:
            return None
        header = cookie.renewal(self.forwarder.balancer.sticky_value(backend), self.prefer,
                                secure=self.secure)
        return None if header is None else (b"set-cookie", header.encode("latin-1"))

    # -- the open WebSocket -------------------------------------------------------------

    async def _relay(self, upstream: WebSocket, backend: Backend, attempts: Attempts,
                     outcome: Outcome, loop: asyncio.AbstractEventLoop) -> None:
        rewrite = self.forwarder.redirects.bind(backend, self.headers)
        headers = [(name.lower(), value)
                   for name, value in BINARY.response_headers(upstream.headers, rewrite)
                   if name.lower() not in _ACCEPT_DROPPED]
        cookie = self._set_cookie(backend)
        if cookie is not None:
            headers.append(cookie)
        try:
            await self.send({"type": "websocket.accept", "subprotocol": upstream.subprotocol,
                             "headers": headers})
        except BaseException:
            upstream.abort()
            raise
        up = loop.create_task(self._client_to_backend(upstream, self.first))
        down = loop.create_task(self._backend_to_client(upstream))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            closed = _result(down)
            if closed is not None:      # the backend closed, or its connection broke
                up.cancel()
                if closed.error is None:
                    await self._close_client(NORMAL if closed.code == NO_STATUS
                                             else closed.code, closed.reason)
                    attempts.end(_with_bytes(outcome, upstream))
                else:
                    await self._close_client(INTERNAL_ERROR, "the backend's WebSocket broke off")
                    attempts.end_failed(_with_bytes(Outcome(
                        ok=False, latency=outcome.latency, status=101,
                        error=f"the WebSocket broke off ({closed.error})"), upstream), _WAS_OPEN)
                return
            # The client left (its close, or a failed send to it): the upstream is closed
            # with its code, 1001 (going away) when it vanished without one. uvicorn's
            # sans-I/O implementation and granian report a lost client as 1005 (no
            # status), which a close frame without a code also is: both are 1001.
            down.cancel()
            code, reason = _result(up) or (ABNORMAL, "")
            await upstream.close(GOING_AWAY if code in _GONE else code, reason)
            attempts.end(_with_bytes(outcome, upstream))
        finally:
            for task in (up, down):
                task.cancel()
            if upstream.closed is None:
                upstream.abort()        # (a clean close lets its last frame go out)
            await asyncio.wait((up, down))

    async def _client_to_backend(self, upstream: WebSocket,
                                 first: asyncio.Future[Message] | None) -> tuple[int, str]:
        """Relay the client's messages (``first``: the one read during the handshake,
        if it was watched) until it leaves: its close code and reason."""
        receive = self.receive
        message = await (receive() if first is None else first)
        while True:
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                # (False: the backend is closing; its message dropped, the client's end
                # awaited)
                await upstream.send(data)
            elif kind == "websocket.disconnect":
                return message.get("code", NORMAL), message.get("reason") or ""
            message = await receive()

    async def _backend_to_client(self, upstream: WebSocket) -> Closed:
        """Relay the backend's messages until it closes: how it closed."""
        send = self.send
        while True:
            message = await upstream.receive()
            if isinstance(message, Closed):
                return message
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})

    async def _close_client(self, code: int, reason: str) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:   # the client is gone already: nothing left to tell it
            pass


_T = TypeVar("_T")


def _with_bytes(outcome: Outcome, upstream: WebSocket) -> Outcome:
    """``outcome`` with the socket's message bytes both ways (the bandwidth policy's)."""
    return outcome._replace(bytes_sent=upstream.bytes_sent,
                            bytes_received=upstream.bytes_received)


def _result(task: asyncio.Task[_T]) -> _T | None:
    """A task's result; ``None`` while it runs, or when it was cancelled or failed (a
    relay fails when its side is gone: the client's server raises on a send to a client
    that left)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()
