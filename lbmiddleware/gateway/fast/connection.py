"""A client's connection to the fast server (:class:`ClientConnection`): httptools parses
each request head into a :class:`Request`, the dispatcher gives it a :class:`Handler` (the
exchange), the body goes to that handler by callbacks, and the handler writes the response
and calls :meth:`ClientConnection.done`. No task, future or closure per request.

What the connection itself enforces, as the gateway's protocol under uvicorn does
(``gateway/uvicorn_server.py``):

- ``LB_HEADER_TIMEOUT`` for each request head: from the connection's start, from the
  head's first byte on a kept-alive connection, or for a pipelined head from the end of
  the response before it; bytes arriving do not extend it. A connection idle after a
  response is closed after :data:`KEEP_ALIVE` seconds (uvicorn's ``timeout_keep_alive``).
  One timer per connection, not per request: it is armed for the earliest limit and, when
  it fires, closes the connection or is armed again for the limit now in force.
- ``LB_MAX_CONNECTIONS``: a connection beyond it is answered 503 and closed at once, with
  an access line (``LB_ACCESS_LOG``) and a WARNING at most every 10 s.
- Pipelined requests wait, with their bodies, until the response before them is done;
  reading stops meanwhile (so at most one read's worth of them is held).
- A malformed request (whatever httptools refuses: a bad character, ``Content-Length`` with
  ``Transfer-Encoding``, two ``Content-Length``...) is answered with the proxy's 400 and the
  connection closed, after the responses to the requests before it.
- Header fields after the body (chunked trailers) are dropped.
- ``Expect: 100-continue``: the handler sends the interim response when it wants the body
  (:meth:`~ClientConnection.send_continue`); a response done without it closes the
  connection (the client may or may not send the body next). An HTTP/1.0 request's is
  ignored (RFC 9110 10.1.1).
- An upgrade (``Upgrade`` with ``Connection: upgrade``, or ``CONNECT``) leaves the fast
  path: the connection, with the head and the bytes after it, is handed to uvicorn's
  protocol on the same app (``ServerState.handoff``), which serves WebSockets as the ASGI
  path does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import unquote

import httptools

from ...proxy.access import access_line
from ...proxy.access import logger as access_logger
from ...upstream.deadlines import Deadlines
from ..logs import RefusalWarnings
from .outbox import Outbox
from .wire import CONTINUE, DateHeader, error_bytes

if TYPE_CHECKING:
    from ...gateway_settings import GatewaySettings

__all__ = ["Request", "Handler", "Dispatch", "ServerState", "ClientConnection", "KEEP_ALIVE",
           "MAX_HEAD", "MAX_HEAD_READ", "head_read"]

logger = logging.getLogger("lbmiddleware.gateway")

#: Seconds an idle kept-alive connection stays open (uvicorn's ``timeout_keep_alive``).
KEEP_ALIVE = 5.0
#: Bytes of a request head at most (its target and fields, each field counted with its ": "
#: and CRLF): a larger one is answered 431 and the connection closed, as uvicorn and
#: granian answer (nginx's limit is 32 KiB in all, 8 KiB a line; the upstream client's, a
#: response's, 64 KiB). Counted as the parser gives the target and the fields, whatever the
#: reads; a head that does not end is refused by :data:`MAX_HEAD_READ`.
MAX_HEAD = 64 * 1024
#: Bytes read while a head stays incomplete, at most: a guard against one field without
#: end, which httptools holds whole until it ends; past it, 431. The read the head began in
#: counts less what the requests ended in it took (their target, fields and body, as the
#: parser gave them), so that a pipelined head is not charged for the request before it.
#: Room for what the exact count leaves out (the method, the version, the line ends, a
#: chunked body's framing), so that a head within MAX_HEAD is rarely refused by it.
MAX_HEAD_READ = MAX_HEAD + 64


def head_read(counted: int, read: int, used: int) -> int:
    """The bytes charged to a head still incomplete after a read of ``read`` bytes
    (:data:`MAX_HEAD_READ`): ``counted`` so far, -1 when the head began in this read;
    ``used``: what the requests that ended in this read took of it."""
    return max(0, read - used) if counted < 0 else counted + read



class Request:
    """A request head as the exchange reads it: names lower-case (as ASGI has them), values
    as sent (less trailing blanks, as uvicorn gives them); ``length`` 0 without a body,
    ``None`` for a chunked one; ``arrived``: ``time.monotonic()`` at the head's end. (The
    connection sets the fields itself, without ``__init__``: a field added here is set in
    ``on_headers_complete`` too.)"""

    __slots__ = ("method", "target", "path", "raw_path", "query", "headers", "version",
                 "keep_alive", "length", "expect_continue", "arrived")

    def __init__(self, method: str, target: bytes, raw_path: bytes, path: str, query: bytes,
                 headers: list[tuple[bytes, bytes]], version: str, keep_alive: bool,
                 length: int | None, expect_continue: bool, arrived: float) -> None:
        self.method = method
        self.target = target
        self.raw_path = raw_path
        self.path = path
        self.query = query
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.length = length
        self.expect_continue = expect_continue
        self.arrived = arrived

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} HTTP/{self.version}>"


_new_request = object.__new__
_monotonic = time.monotonic


class Handler(Protocol):
    """What the connection calls on the handler of a request (the exchange). ``body``
    pieces may still come after :meth:`ClientConnection.pause_body` (those read already)."""

    def body(self, data: bytes) -> None: ...
    def body_end(self) -> None: ...
    def client_lost(self) -> None: ...


class Dispatch(Protocol):
    """Gives each request its handler (``dispatch.Dispatcher``)."""

    def dispatch(self, request: Request, connection: ClientConnection) -> Handler: ...


class _Queued:
    """A pipelined request waiting for the response before it, and its body so far."""

    __slots__ = ("request", "pieces", "complete")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.pieces: list[bytes] = []
        self.complete = False

    def body(self, data: bytes) -> None:
        self.pieces.append(data)

    def body_end(self) -> None:
        self.complete = True


class _Dropped(list[tuple[bytes, bytes]]):
    """Where header fields go once the head is complete (chunked trailers): nowhere."""

    def append(self, field: tuple[bytes, bytes]) -> None:
        pass


_TRAILERS = _Dropped()

# The versions served (llhttp reads 0.9 and 2.0 too).
_VERSIONS = frozenset(("1.1", "1.0"))

# The methods' names as str (httptools gives bytes); others are decoded.
_METHODS = {method.encode("ascii"): method for method in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}

# Header fields the connection reads itself, besides passing them on: the framing, Expect,
# and those llhttp reads for keep-alive (it takes Proxy-Connection as Connection).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"expect", b"connection",
                      b"proxy-connection"))


class _BadRequest(Exception):
    """Raised in a parser callback: the request cannot be read (answered ``status``)."""

    status = 400


class _HeadTooLarge(_BadRequest):
    """Raised in a parser callback: the head is over :data:`MAX_HEAD` (answered 431)."""

    status = 431


class _Closed(Exception):
    """Raised in a parser callback: the connection is closed, the rest is not read."""


class ServerState:
    """What every connection of one server shares: the gateway's ``settings``
    (:class:`~lbmiddleware.gateway_settings.GatewaySettings`), the ``dispatcher``, the
    ``Date`` line (``date``), the timeouts' buckets (``deadlines``), the open connections
    (``connections``: those handed off to uvicorn's protocols too, so that
    ``LB_MAX_CONNECTIONS`` counts them all), ``handoff(transport, data)`` for an upgrade,
    the listener's ``scheme``, whether refusals get an access line (``access_log``), the
    WARNINGs for connections turned away (``refused``) and malformed requests
    (``malformed``), and the writes held for the end of the loop's turn (``outbox``: the
    first connection makes it when none is given; the upstream pools share it)."""

    __slots__ = ("settings", "dispatcher", "handoff", "scheme", "access_log", "date",
                 "deadlines", "connections", "refused", "malformed", "outbox")

    def __init__(self, settings: GatewaySettings, dispatcher: Dispatch,
                 handoff: Callable[[asyncio.Transport, bytes], None], *, scheme: str = "http",
                 access_log: bool = False, date: DateHeader | None = None,
                 deadlines: Deadlines | None = None, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.handoff = handoff
        self.scheme = scheme
        self.access_log = access_log
        self.date = date if date is not None else DateHeader()
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.connections: set[Any] = set()
        self.refused = RefusalWarnings(
            f"too many connections (LB_MAX_CONNECTIONS={settings.max_connections})",
            "answered 503 and closed")
        self.malformed = RefusalWarnings("malformed requests", "answered 400 and closed")
        self.outbox = outbox


class ClientConnection(asyncio.Protocol):
    """One client connection of the fast server (see the module's docstring).

    For the handler: :meth:`write`, :attr:`writing_paused` and :meth:`on_writable` (the
    client's flow control), :meth:`pause_body` / :meth:`resume_body` (the upload's),
    :meth:`send_continue`, :meth:`done` once the response is complete, :meth:`abort` to
    cut the connection; :attr:`peer` (the client's address, ``None`` on a Unix socket),
    :attr:`scheme`, :attr:`state` (the server's: ``date``, ``deadlines``, ``settings``).
    """

    __slots__ = (
        "loop", "state", "peer", "scheme", "transport", "_parser", "_dispatch", "_outbox",
        # the head being read
        "_url", "_headers", "_length", "_expect", "_connection", "_in_head", "_in_message",
        # the request being served, and those waiting
        "_busy", "_handler", "_current", "_keep_alive", "_expecting", "_wrote", "_queue",
        "_serving",
        "_upgrade", "_bad", "_head_size", "_head_read", "_body_size", "_read_used",
        # the connection
        "_open", "_closing", "_reading", "_body_paused", "writing_paused", "_writable",
        "_limit", "_kept_alive", "_timer", "_timer_at", "_cut", "_lingering",
    )

    #: Set by :meth:`connection_made`: a stream's (uvloop's ``TCPTransport`` derives from
    #: no asyncio class, but has every method of ``asyncio.Transport`` the fast path calls).
    transport: asyncio.Transport

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.state = state
        self.peer: str | None = None
        self.scheme = state.scheme
        self._parser = httptools.HttpRequestParser(self)
        # as uvicorn: the response to a request with "Connection: close" is still served
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._dispatch = state.dispatcher.dispatch
        outbox = state.outbox
        if outbox is None:
            outbox = state.outbox = Outbox(loop)
        self._outbox = outbox
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = _TRAILERS
        self._length: int | None = 0
        self._expect = False
        self._connection = False        # the head has a Connection (or Proxy-Connection)
        self._in_head = False           # a head has begun and is not complete
        self._in_message = False        # a request's body is being read
        self._busy = False              # a request is being answered (until done())
        self._handler: Handler | None = None
        self._current: Handler | _Queued | None = None      # where the body being read goes
        self._keep_alive = False        # the request being answered allows another after it
        self._expecting = False         # it asked for 100-continue, not sent yet
        self._wrote = False             # something of its response was written
        self._queue: deque[_Queued] | None = None
        self._serving = False           # in _serve_next's loop
        self._upgrade: bytes | None = None      # a head to hand off, after the responses
        # a malformed request's 400 or 431 (status, detail), due after the responses before
        self._bad: tuple[int, str | None] | None = None
        self._head_size = 0             # bytes of the head's target and fields so far
        # bytes read while the head being read was incomplete (-1: it began in this read)
        self._head_read = 0
        self._body_size = 0             # body bytes of the request being read
        self._read_used = 0             # bytes of this read the requests ended in it took
        self._open = False
        self._closing = False           # shutting down: close after the response
        self._lingering = False         # answered, closing: the rest of the body is dropped
        self._reading = True
        self._body_paused = False
        #: The client's transport buffer is full: the handler waits for :meth:`on_writable`.
        self.writing_paused = False
        self._writable: Callable[[], None] | None = None
        self._limit = 0.0               # loop time at which the connection is closed; 0: none
        self._kept_alive = False        # that limit is the keep-alive one (idle)
        self._timer: Any = None         # the Deadlines handle armed for _timer_at
        self._timer_at = 0.0
        self._cut: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = self.transport = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        state = self.state
        if len(state.connections) >= state.settings.max_connections:
            stream.write(error_bytes(503, date=state.date.value(), close=True,
                                     detail="too many connections"))
            stream.close()
            state.refused()
            if state.access_log and access_logger.isEnabledFor(logging.INFO):
                access_logger.info(access_line(self.peer, "-", "-", 503, None, 0, 0.0))
            return
        self._open = True
        state.connections.add(self)
        self._set_limit(state.settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return                      # the rest of an answered request's body: dropped
        self._read_used = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_from(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            if not self._open:          # closed by a callback (done(False), abort())
                return
            cause = exc.__context__
            if isinstance(cause, _BadRequest):
                self._malformed(cause.status)
            else:
                logger.error("the fast server failed on a request from %s", self.peer,
                             exc_info=exc.__context__ or exc)
                self.abort()
        except httptools.HttpParserError:
            if self._open:
                self._malformed()
        else:
            if self._in_head:           # a head not complete in this read (rarely)
                self._head_read = head_read(self._head_read, len(data), self._read_used)
                if self._head_read > MAX_HEAD_READ:
                    self._head_read = 0
                    self._malformed(431)
                elif self._kept_alive:  # the head's time starts: its first byte came
                    self._kept_alive = False
                    self._set_limit(self.state.settings.header_timeout)

    def eof_received(self) -> bool | None:
        # What this turn wrote goes first: the transport closes now (as uvicorn's protocol
        # has it), and a TLS one drops every write from here on.
        self._outbox.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self.state.connections.discard(self)
        self._stop_timers()
        self._queue = None
        self._current = None
        self._writable = None
        handler, self._handler = self._handler, None
        self._busy = False
        if handler is not None:
            handler.client_lost()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        callback = self._writable
        if callback is not None:
            self._writable = None
            callback()
        elif not self._busy and self._open and not self._serving:
            if self._queue or self._bad is not None or self._upgrade is not None:
                self._serve_next()      # what waited for the client to read
            else:
                self._update_reading()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._open:      # closed by the answer to the request before: read no more
            raise _Closed
        self._url = b""
        self._headers = []
        self._length = 0
        self._expect = False
        self._connection = False
        self._in_head = True
        self._head_size = 0
        self._head_read = -1
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size + len(name) + len(value) + 4
        if size > MAX_HEAD:
            raise _HeadTooLarge         # (trailers count too: they are held as fields are)
        self._head_size = size
        name = name.lower()
        # (llhttp keeps trailing blanks, which RFC 9110 5.5 excludes from the value)
        value = value.rstrip(b" \t")
        self._headers.append((name, value))
        if name in _FRAMING:
            if name == b"content-length":
                self._length = int(value)       # (llhttp took digits only, and one field)
            elif name == b"transfer-encoding":
                self._length = None             # (llhttp took chunked last only)
            elif name == b"expect":
                self._expect = value.lower() == b"100-continue"
            else:
                self._connection = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        url = self._url
        headers = self._headers
        self._headers = _TRAILERS
        self._in_head = False
        self._head_read = 0
        keep_alive = parser.should_keep_alive()
        if keep_alive and not self._connection:
            # Only HTTP/1.1 keeps a connection without a Connection field (llhttp reads no
            # version but 0.9, 1.0, 1.1 and 2.0): the version is not formatted for it.
            version = "1.1"
        else:
            version = parser.get_http_version()
            if version not in _VERSIONS:    # llhttp's HTTP/0.9 (its "headers" too) or 2.0
                raise _BadRequest
        name = parser.get_method()
        method = _METHODS.get(name) or name.decode("ascii")
        # (llhttp upgrades CONNECT, or a request whose Connection, or Proxy-Connection, says
        # "upgrade": without either, it is not asked)
        if (self._connection or method == "CONNECT") and parser.should_upgrade():
            self._current = None
            self._upgrade = b"".join(
                [method.encode(), b" ", url, b" HTTP/", version.encode(), b"\r\n",
                 *[b"%s: %s\r\n" % field for field in headers], b"\r\n"])
            return
        if url[:1] == b"/" and 35 not in url:       # ("#": an int is found faster)
            raw_path, _, query = url.partition(b"?")
        else:                   # absolute form, "*", a fragment: as uvicorn reads them
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError as exc:
                raise _BadRequest from exc
            # (an absolute form's empty path is "/": RFC 9112 3.2.2, RFC 9110 4.2.3)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")       # (llhttp took ASCII only)
        if "%" in path:
            path = unquote(path)
        # (Request's fields set here: a call through type() with eleven arguments costs
        # more than the fields themselves)
        request = _new_request(Request)
        request.method = method
        request.target = url
        request.raw_path = raw_path
        request.path = path
        request.query = query
        request.headers = headers
        request.version = version
        request.keep_alive = keep_alive and version != "1.0"
        request.length = self._length
        # (an HTTP/1.0 client's is ignored: RFC 9110 10.1.1, it has no interim responses;
        # and so is one without a body: nothing is awaited)
        request.expect_continue = self._expect and version != "1.0" and self._length != 0
        request.arrived = _monotonic()
        self._in_message = True
        if self._busy or self.writing_paused:
            # pipelined: it waits for the response before it, and for the client to read
            # the responses written (else a client that never reads has them all held)
            queued = _Queued(request)
            self._current = queued
            if self._queue is None:
                self._queue = deque()
            self._queue.append(queued)
            self._update_reading()
        else:
            self._start(request, None)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        current = self._current
        if current is not None:
            current.body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._read_used += self._head_size + self._body_size
        current = self._current
        if current is not None:
            self._current = None
            current.body_end()
        elif not self._busy and self._open and self._upgrade is None:
            self._idle()        # the end of a body dropped (its response came before it)

    # -- for the handler -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """``data`` to the client at the end of the loop's turn (:mod:`.outbox`); nothing
        once the connection is closed."""
        if self._open:
            self._wrote = True
            self._outbox.write(self.transport, data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        """``parts`` to the client in one write, now (a ``writev``: a large body's first
        piece is not copied behind its head, as ``write(head + piece)`` would); nothing once
        the connection is closed."""
        if self._open:
            self._wrote = True
            self._outbox.flush()        # (what was written before goes first)
            self.transport.writelines(parts)

    def on_writable(self, callback: Callable[[], None]) -> None:
        """``callback()`` once, when the client's buffer has drained (at once if it has);
        never once the client is gone (the handler hears :meth:`Handler.client_lost`)."""
        if not self.writing_paused:
            callback()
        elif self._open:
            self._writable = callback

    def pause_body(self) -> None:
        """Stop reading the request body (pieces read already still come)."""
        self._body_paused = True
        self._update_reading()

    def resume_body(self) -> None:
        self._body_paused = False
        self._update_reading()

    def send_continue(self) -> None:
        """``100 Continue``, once, if the request asked for it and the response has not
        been written."""
        if self._expecting:
            self._expecting = False
            if self._open:
                self._outbox.write(self.transport, CONTINUE)

    def done(self, keep_alive: bool = True) -> None:
        """The response is complete: serve the next request, or close the connection
        (``keep_alive`` False, the request said close, or the server is stopping)."""
        if not self._busy:
            return
        self._busy = False
        self._handler = None
        self._writable = None
        self._body_paused = False
        dropping = self._in_message and not self._queue
        if dropping:                    # its body still coming: dropped
            self._current = None
            if self._expecting:
                keep_alive = False
        if not (keep_alive and self._keep_alive) or self._closing:
            if dropping and not self._closing:
                self._linger()
            else:
                self._close()
        elif self._queue or not self._reading or self._bad is not None \
                or self._upgrade is not None or self.writing_paused:
            if not self._serving:
                self._serve_next()
        else:           # (a body still coming is dropped for the keep-alive time at most)
            self._idle()

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed); the handler hears
        nothing more."""
        self._handler = None
        self._busy = False
        if self._open:
            self._open = False
            self._outbox.flush()        # (what was written before the cut goes first)
            self.transport.abort()

    # -- for the server ------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server stops: close now when no request is being answered, else after its
        response, or after ``LB_SHUTDOWN_TIMEOUT`` at the latest."""
        self._closing = True
        if not self._busy:
            self._close()
        elif self._open and self._cut is None:
            self._cut = self.loop.call_later(self.state.settings.shutdown_timeout,
                                             self._cut_off)

    def _cut_off(self) -> None:
        """The shutdown's grace is over: close, and the handler hears the client gone now
        (not once a client that does not read has taken what was written)."""
        self._cut = None
        handler, self._handler = self._handler, None
        self._busy = False
        self._close()
        if handler is not None:
            handler.client_lost()

    # -- inside --------------------------------------------------------------------------

    def _start(self, request: Request, queued: _Queued | None) -> None:
        """Answer ``request`` (its body so far in ``queued`` when it waited)."""
        self._busy = True
        self._limit = 0.0
        self._kept_alive = False
        self._keep_alive = request.keep_alive
        self._expecting = request.expect_continue
        self._wrote = False
        handler = self._dispatch(request, self)
        if not self._busy:      # answered at once
            if queued is not None and self._current is queued:
                self._current = None
            return
        self._handler = handler
        if queued is None:
            self._current = handler
            return
        for piece in queued.pieces:
            handler.body(piece)
            if self._handler is not handler:
                return
        if queued.complete:
            handler.body_end()
        elif self._current is queued:
            self._current = handler

    def _serve_next(self) -> None:
        """After a response: the requests that waited, then an upgrade's hand-off or a
        malformed request's 400, else the connection is idle; none of it while the client
        is not reading what was written (:meth:`resume_writing` calls this again). (A loop:
        a request answered at once does not nest the next one's answer in its own.)"""
        self._serving = True
        try:
            while self._queue and not self._busy and self._open \
                    and not self.writing_paused:
                queued = self._queue.popleft()
                self._start(queued.request, queued)
        except Exception:           # (a bug: the connection must not hang on it)
            logger.exception("the fast server failed on a request from %s", self.peer)
            self.abort()
        finally:
            self._serving = False
        if self._busy or not self._open:
            self._update_reading()
        elif self.writing_paused:
            if not self._queue:
                self._idle()            # (the keep-alive limit: it may never read)
            self._update_reading()
        elif self._bad is not None:
            self._malformed(*self._bad)
        elif self._upgrade is not None:
            self._hand_off(b"")
        else:
            self._idle()
            self._update_reading()

    def _upgrade_from(self, rest: bytes) -> None:
        """httptools stopped after an upgrade's head: hand the connection off now, or once
        the requests before it are answered."""
        if self._busy:
            self._upgrade = (self._upgrade or b"") + rest
            self._update_reading()
        else:
            self._hand_off(rest)

    def _hand_off(self, rest: bytes) -> None:
        data, self._upgrade = (self._upgrade or b"") + rest, None
        self._open = False
        self._stop_timers()
        self.state.connections.discard(self)
        if not self._reading:
            self._reading = True
            self.transport.resume_reading()
        self._outbox.flush()            # (the responses before it, then the protocol's)
        self.state.handoff(self.transport, data)

    def _malformed(self, status: int = 400, detail: str | None = None) -> None:
        """The proxy's 400 (or 431: a head too large) and close: now, or after the
        responses to the requests before.
        When the request being answered is the malformed one (its body broke the rules:
        a bad chunk, a ``Transfer-Encoding`` httptools refuses once the head was read), its
        handler hears that the client is gone, and the 400 goes only if nothing of the
        response has."""
        handler = self._handler
        if handler is not None and self._current is handler:
            self._handler = self._current = None
            self._busy = False
            handler.client_lost()
            if self._wrote:
                self.state.malformed()
                self._close()
                return
        elif not self._busy and self._in_message and self._current is None:
            # its body, dropped, broke the rules: the request was answered already (one
            # request, one response)
            self.state.malformed()
            self._close()
            return
        elif self._busy:
            self._bad = (status, detail)
            self._update_reading()
            return
        self.state.malformed()
        self.write(error_bytes(status, date=self.state.date.value(), close=True,
                               detail=detail))
        self._close()

    def _update_reading(self) -> None:
        """Read while nothing waits: no paused upload, no queued request, no refusal or
        hand-off due, and, between requests, a client that reads what was written."""
        reading = not (self._body_paused or self._queue or self._bad is not None
                       or self._upgrade is not None
                       or (self.writing_paused and not self._busy))
        if reading is not self._reading and self._open:
            self._reading = reading
            if reading:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._outbox.flush()        # (the last response: close() sends what it has)
            self.transport.close()

    def _linger(self) -> None:
        """Close after a response given while the request's body still comes, without losing
        that response: closed at once with unread bytes, the socket sends a reset, and the
        client's kernel drops what it had not read yet, the response included (nginx's
        ``lingering_close``). So: the response and a FIN go out, what the client still sends
        is read and dropped, and the connection closes when the client closes its side, or
        after the keep-alive time (a client's bytes do not extend it)."""
        if not self._open:
            return
        if not self.transport.can_write_eof():      # (TLS: no half-close)
            self._close()
            return
        self._lingering = True
        self._kept_alive = False
        self._outbox.flush()            # (the response, then the FIN)
        self.transport.write_eof()
        if not self._reading:
            self._reading = True
            self.transport.resume_reading()
        self._set_limit(KEEP_ALIVE)

    # -- the connection's one timer ------------------------------------------------------

    def _idle(self) -> None:
        """Nothing to answer: the keep-alive limit, or a head's if one has begun. (While the
        body of a request already answered still comes, it is dropped under the keep-alive
        limit, which its bytes do not extend: a client that never sends it does not hold
        the connection.)"""
        if self._in_head:
            self._kept_alive = False
            self._set_limit(self.state.settings.header_timeout)
            return
        self._kept_alive = True
        # (_set_limit's, inline: after every response)
        at = self.loop.time() + KEEP_ALIVE
        self._limit = at
        if self._timer is None or self._timer_at > at:
            self._set_limit(KEEP_ALIVE)

    def _set_limit(self, seconds: float) -> None:
        """Close the connection in ``seconds`` unless a request comes to be answered."""
        at = self.loop.time() + seconds
        self._limit = at
        if self._timer is None or self._timer_at > at:
            deadlines = self.state.deadlines
            if self._timer is not None:
                deadlines.cancel(self._timer)
            self._timer = deadlines.start(seconds, _expired, self, self.loop)
            self._timer_at = at

    def _stop_timers(self) -> None:
        if self._timer is not None:
            self.state.deadlines.cancel(self._timer)
            self._timer = None
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None


def _expired(connection: ClientConnection) -> None:
    """The connection's timer: close it if its limit has passed, else wait on."""
    connection._timer = None
    limit = connection._limit
    if not limit or not connection._open:
        return
    left = limit - connection.loop.time()
    if left > 0:
        connection._timer = connection.state.deadlines.start(left, _expired, connection,
                                                             connection.loop)
        connection._timer_at = limit
    else:
        connection._close()
