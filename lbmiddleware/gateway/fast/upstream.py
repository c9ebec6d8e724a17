"""The fast path's upstream HTTP/1.1 client: keep-alive connections as :class:`asyncio.Protocol`
objects, responses parsed by httptools (llhttp) and handed over by callbacks.

The coroutine client (:mod:`lbmiddleware.upstream`) costs a task, two futures and a few awaits
per request; here a request on an idle keep-alive connection is one ``transport.write`` and the
response comes back through a :class:`Receiver`'s methods, called from ``data_received``: no
task, no future, no timer per request (a connection's read timeout is one entry in the shared
:class:`~lbmiddleware.upstream.deadlines.Deadlines` buckets, left running from call to call
and set again, when it fires, for the time left since the last sign of life). Tasks only
where the work really waits: opening a connection. Measured with
``benchmarks/bench_fast_upstream.py`` against one nginx: about 0.6 times the coroutine
client's CPU per request.

The behaviour is the coroutine client's, in its words and with its errors
(:mod:`lbmiddleware.upstream.errors`: ``sent``, ``timeout``, ``deadline``, ``bytes_sent``):

* idle connections are kept per backend, newest first (LIFO: the warm ones are reused and the
  cold ones age out after ``idle_timeout``); one the backend closed or wrote to while idle is
  dropped at once. A reused connection that closes before any response byte is a
  :class:`~lbmiddleware.upstream.errors.StaleConnection`, sent once more on a fresh
  connection when the caller says it may (``resend``: the retry rule's answer);
* the connect timeout, the read timeout for each wait (the head; each body read; a stalled
  upload) and the caller's ``head_timeout`` (a request's deadline: connect, upload and wait for
  the head together; ``deadline`` set on the error it causes);
* interim ``1xx`` responses skipped; ``HEAD`` responses and ``204``/``304`` without a body
  whatever their head says; chunked bodies de-chunked; a body without framing read until the
  backend closes; an unasked ``101``, a status outside 100-599, a control character in the
  reason, or anything llhttp refuses is a :class:`~lbmiddleware.upstream.errors.ProtocolError`
  (the proxy's 502);
* a response that arrives while the request body is still being sent stops the upload (a
  backend's early 413 or 401 is delivered at once) and the connection is not reused; nor is it
  after bytes past the end of a response, a response that says ``close`` or an HTTP/1.0 one
  without keep-alive;
* https backends with the pool's TLS context and the backend's server name (SNI and the
  certificate check), a failed handshake a :class:`~lbmiddleware.upstream.errors.TLSError` in
  :func:`~lbmiddleware.upstream.tls.tls_failure_text`'s words (a TLS 1.3 backend's verdict on
  the client certificate, which comes after the request was written, too).

A response with ``Content-Length`` beside ``Transfer-Encoding: chunked`` is read chunked, as
the coroutine client reads it (RFC 9112 6.3: the coding overrides the length), and its
connection is not reused. Where llhttp and the coroutine client's own parser differ: a chunk
size of more than 16 hex digits with leading zeros and a chunk extension without a name are
taken; a chunk extension with blanks around ``;`` and the same ``Content-Length`` twice are
refused (a 502).
"""

from __future__ import annotations

import asyncio
import re
import ssl as ssl_module
from collections.abc import Iterable
from typing import Protocol, cast

import httptools

from ...core.backend import Backend
from ...upstream.deadlines import Deadlines
from ...upstream.errors import (
    CONNECT_FAILURES,
    ProtocolError,
    ReadTimeout,
    StaleConnection,
    TLSError,
    UpstreamError,
    connect_error,
)
from ...upstream.parser import MAX_HEAD
from ...upstream.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IDLE, forget_pools, pool_for
from ...upstream.tls import handshake_verdict, system_ssl_context, tls_failure_text
from .outbox import Outbox

__all__ = ["UpstreamPools", "BackendPool", "Call", "Receiver", "UpstreamConnection",
           "UPLOAD_HIGH_WATER"]

#: Request body bytes held for a connection being opened before the receiver is told to
#: pause the upload (as a transport's write buffer would).
UPLOAD_HIGH_WATER = 64 * 1024
_SHORTEST = 0.001           # seconds: a timer is never set shorter than this

# A connection's states. Plain strings compared by identity.
_OPENING = "opening"        # being opened for a call
_IDLE = "idle"              # in its pool; a byte from the backend now is an error
_BUSY = "busy"              # carrying a call
_CLOSED = "closed"          # closed or closing: never used again

_NO_HEADERS: list[tuple[bytes, bytes]] = []    # (never changed)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:[ \t]*([^\r\n]*)", re.IGNORECASE).search
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE).search
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search


def _last_coding_chunked(value: bytes) -> bool:
    """A Transfer-Encoding value whose last coding is chunked (RFC 9112 6.1)."""
    return value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Trailing(Exception):
    """Raised in a parser callback to stop llhttp at bytes past the end of the response."""


class Receiver(Protocol):
    """What a :class:`Call` reports to (the exchange).

    A read from the backend is parsed whole before anything is reported, then reported in
    this order: :meth:`upstream_head` (when the head completed in this read), then all of
    the read's body bytes: with :meth:`upstream_end` when the response ended in this read
    (one call for a small response's body and end), else by one :meth:`upstream_body`.
    During :meth:`upstream_head`, :attr:`Call.follows` says whether body bytes or the end
    follow in this same read (a receiver may hold the head and write it with them: one
    write for a small response). :meth:`BackendPool.request` reports nothing
    before it returns; :meth:`Call.send_body` may report :meth:`upload_paused` at once (the
    write filled the buffer). After :meth:`upstream_end`, :meth:`upstream_failed` or
    :meth:`Call.abort` nothing more is reported."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      length: int | None, chunked: bool) -> None:
        """The final response head. ``headers`` as sent (names in any case); ``length`` the
        Content-Length it states (``None``: none), ``chunked`` whether it is chunked. A
        response to ``HEAD`` and a 204 or 304 have no body whatever these say; a response
        with neither (and a body) is read until the backend closes."""

    def upstream_body(self, data: bytes) -> None:
        """Body bytes (de-chunked), the response not complete yet."""

    def upstream_end(self, last: bytes) -> None:
        """The response is complete (the connection went back to its pool, or closed);
        ``last``: the body bytes that came with its end (b"" when none)."""

    def upstream_failed(self, error: UpstreamError) -> None:
        """The attempt failed, before or after the head (a body cut short)."""

    def upload_paused(self) -> None:
        """The backend's write buffer is full: stop sending body pieces for now."""

    def upload_resumed(self) -> None:
        """It drained (or the upload is over: the response came): send again."""


class Call:
    """One attempt's upstream I/O, returned by :meth:`BackendPool.request`."""

    __slots__ = ("pool", "receiver", "connection", "bytes_sent", "follows", "_head", "_body",
                 "_size", "_held_size", "_streaming", "_chunked", "_left", "_replay",
                 "_head_request", "_limit", "_task", "_pending", "_held", "_told_paused",
                 "_done")

    def __init__(self, pool: BackendPool, receiver: Receiver, head: bytes, body: bytes,
                 more_body: bool, resend: bool, head_request: bool, limit: float,
                 chunked: bool | None = None) -> None:
        self.pool = pool
        self.receiver = receiver
        self.connection: UpstreamConnection | None = None
        #: Request body bytes written so far (framing not counted).
        self.bytes_sent = 0
        #: During :meth:`Receiver.upstream_head`: body bytes or the end follow in this read.
        self.follows = False
        self._head = head
        self._size = len(body)
        self._streaming = more_body     # more body pieces to come from the receiver
        self._replay = resend
        self._head_request = head_request
        self._limit = limit             # loop time the head is due by; 0.0: none
        self._task: asyncio.Task[None] | None = None
        self._pending: list[bytes] | None = None    # body written while connecting
        self._held = 0                  # bytes in _pending
        self._held_size = 0             # body bytes among them
        self._told_paused = False
        self._done = False
        if chunked is None:             # (the caller did not say: read from the head)
            coding = _TRANSFER_ENCODING(head)
            chunked = coding is not None and _last_coding_chunked(coding.group(1))
        self._chunked = chunked
        self._left = 0                  # Content-Length bytes still to stream
        if chunked:
            if body:
                body = _chunk(body)
            if not more_body:
                body += b"0\r\n\r\n"
        elif more_body:
            length = _CONTENT_LENGTH(head)
            self._left = (int(length.group(1)) if length else 0) - len(body)
        self._body = body

    # -- the receiver's side ---------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        """More of a streamed body (``more_body=True``), framed as the head says. Dropped once
        the response has come (the upload stopped) or the call ended."""
        if not self._streaming or not data:
            return
        self._replay = False
        size = len(data)
        if not self._chunked:
            self._left -= size
            if self._left < 0:
                self._refuse("the request body is longer than its Content-Length")
                return
        connection = self.connection
        if connection is not None:
            self.bytes_sent += size
            connection.write_body(data, self._chunked)
            return
        self._hold(_chunk(data) if self._chunked else data, size)

    def end_body(self) -> None:
        """The streamed body is complete (the last chunk written when chunked); the read
        timeout for the head starts now."""
        if not self._streaming:
            return
        self._streaming = False
        self._replay = False
        if not self._chunked and self._left:
            self._refuse("the request body ended before its Content-Length")
            return
        tail = b"0\r\n\r\n" if self._chunked else b""
        connection = self.connection
        if connection is not None:
            connection.upload_ended(tail)
        elif tail:
            self._hold(tail, 0)

    def pause_reading(self) -> None:
        """Stop reading the response (the client is slow); no read timeout runs meanwhile."""
        if self.connection is not None:
            self.connection.pause_reading()

    def resume_reading(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def abort(self) -> None:
        """Give up: the connection is closed (or its opening cancelled); nothing more is
        reported."""
        if self._done:
            return
        self._done = True
        self._let_go()

    def _let_go(self) -> None:
        """Stop the upload, cancel the opening, close the connection (nothing of it is
        reported)."""
        self._streaming = False
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
        connection = self.connection
        if connection is not None:
            self.connection = None
            connection.abandon()

    # -- the pool's and the connection's side ------------------------------------------------

    def _hold(self, data: bytes, size: int) -> None:
        """Keep body bytes sent while the connection is being opened."""
        if self._pending is None:
            self._pending = []
        self._pending.append(data)
        self._held_size += size
        self._held += len(data)
        if self._held > UPLOAD_HIGH_WATER and not self._told_paused:
            self._told_paused = True
            self.receiver.upload_paused()

    def _take_held(self) -> tuple[bytes, int]:
        """The bytes to write on a new connection: the head, the body, what came meanwhile;
        and the body bytes among them."""
        data = self._head + self._body if self._body else self._head
        pending = self._pending
        if pending:
            self._pending = None
            self._held = 0
            data += b"".join(pending)
        return data, self._size + self._held_size

    def _refuse(self, message: str) -> None:
        """A body that does not match its Content-Length: the attempt fails (reported on the
        next loop turn, not inside the receiver's own call)."""
        self._let_go()
        self.pool.loop.call_soon(self._fail, ProtocolError(message))

    def _fail(self, error: UpstreamError) -> None:
        if self._done:
            return
        self._done = True
        self._streaming = False
        self.connection = None
        error.bytes_sent = self.bytes_sent
        self.receiver.upstream_failed(error)


class _Nobody:
    """The receiver of a connection without a call: told nothing (never called)."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      length: int | None, chunked: bool) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_end(self, last: bytes) -> None: ...

    def upstream_failed(self, error: UpstreamError) -> None: ...

    def upload_paused(self) -> None: ...

    def upload_resumed(self) -> None: ...


_NOBODY: Receiver = _Nobody()


def _new_parser(connection: UpstreamConnection) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(connection)
    # "5 \r\n": blanks after a chunk size, as the coroutine client's parser takes them; and
    # Content-Length beside Transfer-Encoding: chunked, read chunked (RFC 9112 6.3), as it
    # reads it too (llhttp then says the connection is not to be kept).
    parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True,
                                    lenient_chunked_length=True)
    return parser


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; carries one :class:`Call` at a time.

    llhttp calls its ``on_*`` methods while :meth:`data_received` feeds it; they only note what
    came, and :meth:`data_received` reports it to the receiver once the read is parsed (a
    receiver that starts the next request from :meth:`Receiver.upstream_end` finds this
    connection back in its pool, its parser at rest)."""

    __slots__ = ("pool", "transport", "requests", "idle_since", "_state", "_parser", "_call",
                 "_receiver", "_status", "_reason", "_headers", "_final", "_length", "_chunked",
                 "_coded", "_keep_alive", "_until_close", "_head_only", "_interim", "_fresh",
                 "_answered", "_complete", "_trailing", "_cut", "_got_bytes", "_pieces",
                 "_quiet", "_seen", "_timer", "_due", "_write_paused", "_read_paused", "_starting",
                 "_refused", "_left", "_raw", "_ending")

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.requests = 0
        self.idle_since = 0.0
        self._state = _OPENING
        self._parser = _new_parser(self)
        self._call: Call | None = None
        self._receiver = _NOBODY
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._final = _NO_HEADERS       # the final head's, until reported
        self._length: int | None = None
        self._chunked = False
        self._coded = False             # the head says Transfer-Encoding (chunked or not)
        self._keep_alive = False
        self._until_close = False
        self._head_only = False
        self._interim = False
        self._fresh = False             # a head parsed in this read, not reported yet
        self._answered = False          # the head was reported
        self._complete = False          # the response ended
        self._trailing = False          # bytes came past its end
        self._cut = False               # the response came before the upload ended
        self._got_bytes = False
        self._pieces: list[bytes] = []
        self._quiet = 0                 # bytes read since the last body bytes
        self._seen = 0.0                # loop time of the last sign of life
        self._timer: object = None
        self._due = 0.0                 # loop time the timer is set for
        self._write_paused = False
        self._read_paused = False
        self._starting = False
        self._refused: UpstreamError | None = None
        self._left = -1                 # a body of known length: its bytes not read yet
        self._raw = False               # the reads are that body's bytes: not parsed
        self._ending = False            # back in the pool, its receiver told of the end now

    # -- a call --------------------------------------------------------------------------------

    def start(self, call: Call, data: bytes, body_bytes: int, now: float | None = None
              ) -> None:
        """Carry ``call``: write ``data`` (its head and what there is of its body) at once.
        ``now``: the loop's time, when the caller has just read it."""
        if self._refused is not None:       # closed (or refused by TLS) as it was opened
            self._close(abort=True)
            call._fail(self._refused)
            return
        pool = self.pool
        self._call = call
        self._receiver = call.receiver
        call.connection = self
        call.bytes_sent = body_bytes
        self.requests += 1
        self._state = _BUSY
        # (what a response that ended leaves as it was is not reset: _status, _fresh,
        # _interim; and a connection with _trailing or _cut set is not used again)
        self._reason = b""
        self._headers = []
        self._answered = self._complete = self._got_bytes = self._raw = False
        self._head_only = call._head_request
        self._quiet = 0
        loop = pool.loop
        if now is None:
            now = loop.time()
        self._seen = now
        # The read timeout's timer is left set when a call ends: the next call on the
        # connection finds it running (no timer per request) and it is set again for what
        # is left when it fires. Only a head deadline sooner than it needs a new one.
        limit = call._limit
        if self._timer is None:
            delay = pool.read_timeout
            if limit and limit - now < delay:
                delay = max(_SHORTEST, limit - now)
            self._set_timer(now, delay)
        elif limit and limit < self._due:
            pool.deadlines.cancel(self._timer)
            self._set_timer(now, max(_SHORTEST, limit - now))
        transport = self.transport
        if transport is None:
            raise RuntimeError("a call started on a connection not made")
        self._starting = True
        pool.outbox.write(transport, data, self._write_refused)
        self._starting = False
        if call._told_paused and not self._write_paused:
            call._told_paused = False
            call.receiver.upload_resumed()

    def _write_refused(self) -> None:
        """uvloop refused the call's head: the transport was closed by the backend (its
        close not yet seen here). Lost before the head, on the next loop turn."""
        self.pool.loop.call_soon(self._lost, "the backend closed the connection", None)

    def write_body(self, data: bytes, chunked: bool) -> None:
        """A piece of a streamed body, framed (now: the head held before it goes first)."""
        transport = self.transport
        if transport is None or self._cut or self._state is not _BUSY:
            return
        self.pool.outbox.flush()
        try:
            if chunked:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                transport.write(data)
        except RuntimeError:
            pass            # closed: connection_lost reports it

    def upload_ended(self, tail: bytes) -> None:
        """The streamed body is all written (``tail``: the last chunk): the read timeout for
        the head runs from now."""
        if self._state is not _BUSY or self._cut:
            return
        self._seen = self.pool.loop.time()
        transport = self.transport
        if tail and transport is not None:
            self.pool.outbox.flush()
            try:
                transport.write(tail)
            except RuntimeError:
                pass

    def pause_reading(self) -> None:
        if not self._read_paused and self._state is _BUSY and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self._state is _BUSY and self.transport is not None:
            self._read_paused = False
            self._seen = self.pool.loop.time()
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The call gave up: close at once, report nothing."""
        self._call = None
        self._receiver = _NOBODY
        self._close(abort=True)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream's (uvloop's TCPTransport derives from no asyncio class, but has every
        # method of asyncio.Transport the fast path calls); typeshed declares the base class
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._state is not _BUSY:
            if self._state is _IDLE:
                self._close(abort=True)     # unexpected bytes on an idle connection
            elif self._state is _OPENING:
                self._refused = ProtocolError("unexpected bytes on a new connection")
            return
        self._got_bytes = True
        if self._raw:
            self._read_raw(data)
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self._complete:
                self._parse_failed(exc)
                return
            self._trailing = True           # bytes past the end: the connection is not reused
        receiver = self._receiver
        if self._fresh:
            self._fresh = False
            self._answered = True
            call = self._call
            if call is None:
                raise RuntimeError("a response on a connection without its call")
            call.follows = True if self._pieces or self._complete else False
            resumed = False
            if call._streaming:             # answered before the upload ended: it stops
                call._streaming = False
                self._cut = True
                resumed, call._told_paused = call._told_paused, False
            receiver.upstream_head(self._status, self._reason, self._final, self._length,
                                   self._chunked)
            self._final = _NO_HEADERS
            if self._state is not _BUSY:
                return                      # the receiver gave up
            if resumed:
                receiver.upload_resumed()   # (nothing more is sent: the rest may be dropped)
                if self._state is not _BUSY:
                    return
        pieces = self._pieces
        body = b""
        if pieces:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            self._quiet = 0
        elif not self._complete:
            self._quiet += len(data)
            if self._quiet > MAX_HEAD:
                self._broken(ProtocolError(
                    "a chunk header or trailer is too large" if self._answered
                    else "the response head is too large"))
                return
        if self._complete:
            self._finish(body)              # (the body with the end: one call)
            return
        if body:
            if self._left > 0:
                self._left -= len(body)
            receiver.upstream_body(body)
            if self._state is not _BUSY:
                return
        if self._answered:
            # The body's bytes each begin a new wait; a head's do not (a head trickled in a
            # byte at a time gets the read timeout, as in the coroutine client).
            self._seen = self.pool.loop.time()
            if self._left > 0:
                self._raw = True            # the rest of a body of known length

    def _read_raw(self, data: bytes) -> None:
        """The reads after a head whose body's length is known, until its end: body bytes
        as they came, without the parser (llhttp gives a body in copies: a 1 MB body cost
        twice its bytes in copies, and the fresh memory's page faults). The parser, left
        in the middle of that body, is replaced by a new one at its end; bytes past the end
        go to that one, as llhttp would have read them (blank lines skipped, anything else
        the connection's end)."""
        left = self._left
        size = len(data)
        receiver = self._receiver
        if size < left:
            self._left = left - size
            receiver.upstream_body(data)
            if self._state is _BUSY:
                self._seen = self.pool.loop.time()
            return
        self._left = 0
        self._raw = False
        self._complete = True
        self._parser = parser = _new_parser(self)
        if size > left:
            rest, data = data[left:], data[:left]
            try:
                parser.feed_data(rest)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._trailing = True       # bytes past the end: the connection is not reused
        self._finish(data)

    def eof_received(self) -> bool | None:
        if self._state is _BUSY:
            self._lost("the backend closed the connection", None)
        elif self._state is _IDLE:
            self._close(abort=True)
        elif self._state is _OPENING:
            self._refused = ProtocolError("the backend closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        if state is _BUSY:
            self._lost("the connection to the backend was lost", exc)
        elif state is _IDLE:
            self._close(abort=True)
        elif state is _OPENING:
            self._refused = (TLSError(tls_failure_text(exc)) if handshake_verdict(exc)
                             else ProtocolError("the connection to the backend was lost"))
        self._state = _CLOSED

    def pause_writing(self) -> None:
        self._write_paused = True
        self._seen = self.pool.loop.time()
        call = self._call
        if call is not None and call._streaming and not call._told_paused:
            if self._starting:          # inside request(): told on the next loop turn
                self.pool.loop.call_soon(self._tell_paused, call)
            else:
                call._told_paused = True
                call.receiver.upload_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._seen = self.pool.loop.time()
        call = self._call
        if call is not None and call._told_paused:
            call._told_paused = False
            call.receiver.upload_resumed()

    def _tell_paused(self, call: Call) -> None:
        if self._call is call and call._streaming and self._write_paused \
                and not call._told_paused:
            call._told_paused = True
            call.receiver.upload_paused()

    # -- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Trailing
        self._length = None
        self._chunked = self._coded = False

    def on_status(self, status: bytes) -> None:
        # (llhttp may give the reason in pieces, across reads)
        self._reason = self._reason + status if self._reason else status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if headers is not None:
            value = value.rstrip(b" \t")    # (llhttp keeps blanks after the value)
            headers.append((name, value))
            size = len(name)
            if size == 14 or size == 17:    # (the length of either framing field's name)
                name = name.lower()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"transfer-encoding":
                    self._chunked = _last_coding_chunked(value)
                    self._coded = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        reason = self._reason
        if reason and not reason.isalnum() and _CONTROL(reason):
            raise ProtocolError(f"a control character in the backend's reason: {reason[:80]!r}")
        if status < 200:
            if status == 101:
                raise ProtocolError("the backend switched protocols (101) unasked")
            if status < 100:
                raise ProtocolError(f"the backend's status {status} is outside 100-599")
            self._interim = True        # 100, 102, 103: the real response follows
            return
        if status > 599:
            raise ProtocolError(f"the backend's status {status} is outside 100-599")
        headers = self._headers
        if headers is None:             # (llhttp ends the head once: trailers are not one)
            raise ProtocolError("a second response head in one response")
        length = self._length
        chunked = self._chunked
        keep_alive = parser.should_keep_alive()
        if not keep_alive and parser.get_http_version() not in ("1.1", "1.0"):
            raise ProtocolError("the backend's response is not HTTP/1.x")
        self._final = headers
        self._headers = None                # (trailers are not headers)
        self._status = status
        self._fresh = True
        self._until_close = False
        self._left = -1
        if self._head_only:
            # No body, whatever the head says; llhttp would wait for one: a new parser for
            # the next call (this one still runs: feed_data holds it).
            self._complete = True
            self._parser = _new_parser(self)
            keep_alive = _keeps_alive(parser, headers)
        elif status == 204 or status == 304:
            pass
        elif length is not None:
            if not self._coded:
                self._left = length
            else:                       # beside Transfer-Encoding: read by the coding, and
                keep_alive = False      # the connection not kept (RFC 9112 6.3)
        elif not chunked:
            self._until_close = True
        self._keep_alive = keep_alive

    def on_body(self, body: bytes) -> None:
        if self._complete:
            raise _Trailing                 # (a body after a response to HEAD)
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._reason = b""
            self._headers = []
            return
        self._complete = True

    # -- the endings -------------------------------------------------------------------------

    def _finish(self, last: bytes) -> None:
        """The response ended (``last``: the body bytes that came with its end): the
        connection goes back to its pool (or closes), then the receiver hears of it."""
        call = self._call
        receiver = self._receiver
        if call is None:
            raise RuntimeError("a response's end on a connection without its call")
        self._call = None
        self._receiver = _NOBODY
        call.connection = None
        call._done = True
        # (a transport closing meanwhile is seen when the connection is taken from the pool)
        if self._keep_alive and not self._trailing and not self._cut \
                and self.transport is not None:
            self._state = _IDLE
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            pool = self.pool
            if len(pool._idle) < pool.max_idle:
                self.idle_since = pool.loop.time()
                pool._idle.append(self)
                # A close the backend sent with this response is read on a later turn of the
                # loop: until upstream_end returns, a request that may not be sent twice
                # does not take this connection (BackendPool.request).
                self._ending = True
                try:
                    receiver.upstream_end(last)
                finally:
                    self._ending = False
                return
            self._close(abort=False)
        else:
            self._close(abort=self._cut)
        receiver.upstream_end(last)

    def _lost(self, message: str, exc: Exception | None) -> None:
        """The backend closed (or the connection broke) during a call."""
        if self._state is not _BUSY or self._call is None:
            return
        if isinstance(exc, ssl_module.SSLError):
            text = tls_failure_text(exc)
            if self.requests == 1 and not self._got_bytes and handshake_verdict(exc):
                self._broken(TLSError(text))
                return
            message = text
        if self._answered and self._until_close:
            self._complete = True           # the end of a body read until the close
            self._keep_alive = False
            self._finish(b"")
            return
        if self.requests > 1 and not self._got_bytes:
            call = self._call
            if call._replay:
                # A reused connection the backend had closed: the request never reached it.
                call._replay = False
                self._call = None
                self._receiver = _NOBODY
                call.connection = None
                self._close(abort=True)
                call.pool._open(call)
                return
            self._broken(StaleConnection(message + " (a reused idle connection)"))
            return
        self._broken(ProtocolError(message))

    def _parse_failed(self, exc: Exception) -> None:
        cause = exc.__context__
        if isinstance(cause, UpstreamError):
            error = cause
        else:
            words = str(exc) or type(exc).__name__
            error = ProtocolError(f"the backend's response is not valid HTTP/1.1: {words}")
        self._broken(error)

    def _broken(self, error: UpstreamError) -> None:
        """The call fails with ``error``; the connection is closed."""
        call = self._call
        self._call = None
        self._receiver = _NOBODY
        self._close(abort=True)
        if call is not None:
            call._fail(error)

    def _expired(self) -> None:
        """The read timeout's timer: fail if nothing came for ``read_timeout`` (or the head's
        deadline passed), else set it again for what is left.

        A timer cancelled while its bucket was firing still fires (Deadlines cannot take it
        out any more): one that is not the connection's current timer (set for later, or for a
        call since ended) does nothing."""
        pool = self.pool
        loop = pool.loop
        now = loop.time()
        if now + _SHORTEST < self._due:
            return
        self._timer = None
        call = self._call
        if self._state is not _BUSY or call is None:
            return                          # idle: the timer lapses
        limit = call._limit
        waiting_head = not self._answered
        if limit and waiting_head and now >= limit:
            error = ReadTimeout("no response head from the backend within the read timeout")
            error.deadline = True
            self._broken(error)
            return
        if self._read_paused or (call._streaming and not self._write_paused):
            left = pool.read_timeout        # held back by the client, not by the backend
        else:
            left = self._seen + pool.read_timeout - now
            if left <= 0:
                self._broken(ReadTimeout(
                    "the backend stopped reading the request body" if call._streaming
                    else "no response head from the backend within the read timeout"
                    if waiting_head else "no body bytes from the backend within the read timeout"))
                return
        if limit and waiting_head and limit - now < left:
            left = limit - now
        self._set_timer(now, max(left, _SHORTEST))

    def _set_timer(self, now: float, delay: float) -> None:
        self._due = now + delay
        pool = self.pool
        self._timer = pool.deadlines.start(delay, UpstreamConnection._expired, self, pool.loop)

    def _close(self, *, abort: bool) -> None:
        """Close (``abort``: drop what is unsent, an upload the backend will not read) and
        leave the pool."""
        state = self._state
        self._state = _CLOSED
        if self._timer is not None:
            self.pool.deadlines.cancel(self._timer)
            self._timer = None
        transport = self.transport
        if transport is not None:
            self.pool.outbox.flush()    # (what was written before goes first)
            if abort:
                transport.abort()
            else:
                transport.close()
        if state is _IDLE:
            self.pool._discard(self)        # (if it is still in the pool's list)


def _keeps_alive(parser: httptools.HttpResponseParser, headers: list[tuple[bytes, bytes]]
                 ) -> bool:
    """Keep-alive by version and Connection alone (a response to HEAD: no framing needed)."""
    keep_alive = parser.get_http_version() == "1.1"
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens = [token.strip().lower() for token in value.split(b",")]
            if b"close" in tokens:
                return False
            if b"keep-alive" in tokens:
                keep_alive = True
    return keep_alive


class BackendPool:
    """Keep-alive connections to one backend, and the calls sent over them."""

    __slots__ = ("backend", "base_path", "authority", "connect_timeout", "read_timeout",
                 "loop", "deadlines", "outbox", "max_idle", "idle_timeout", "opened", "_ssl",
                 "_server_hostname", "_idle", "_connecting")

    def __init__(self, backend: Backend, *, connect_timeout: float, read_timeout: float,
                 loop: asyncio.AbstractEventLoop, deadlines: Deadlines,
                 ssl: ssl_module.SSLContext | None = None, max_idle: int = DEFAULT_MAX_IDLE,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, outbox: Outbox | None = None
                 ) -> None:
        self.backend = backend
        # (as HostPool: Host and TLS use the name a backend answers to, the socket its address)
        self.base_path = backend.path.encode("ascii")
        self.authority = backend.authority.encode("ascii")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.loop = loop
        self.deadlines = deadlines
        #: The writes held for the end of the loop's turn (:mod:`.outbox`).
        self.outbox = outbox if outbox is not None else Outbox(loop)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.opened = 0                 # connections opened, ever (for tests and stats)
        https = backend.scheme == "https"
        self._ssl = (ssl or system_ssl_context()) if https else None
        self._server_hostname = backend.tls_server_name if https else None
        self._idle: list[UpstreamConnection] = []
        self._connecting: set[asyncio.Task[None]] = set()

    def request(self, head: bytes, body: bytes, receiver: Receiver, more_body: bool,
                resend: bool, head_timeout: float | None, head_request: bool,
                chunked: bool | None = None) -> Call:
        """Send a request: ``head`` whole (request line, headers with Host and framing, the
        blank line), ``body`` what there is of the body (all of it unless ``more_body``: then
        :meth:`Call.send_body` and :meth:`Call.end_body`). An idle connection gets it in one
        write; else a task opens one. ``resend``: a reused connection found closed before any
        response byte may be replaced by a fresh one, once (with nothing streamed yet).
        ``head_timeout``: seconds the response head may take from now, everything included.
        ``chunked``: whether ``head`` says ``Transfer-Encoding: chunked`` (None: read it).
        (Not keyword-only: the exchange passes them by position, once per attempt.)"""
        loop = self.loop
        now = loop.time()
        call = Call(self, receiver, head, body, more_body, resend, head_request,
                    0.0 if head_timeout is None else now + head_timeout, chunked)
        idle = self._idle
        if idle:
            oldest = now - self.idle_timeout
            ending = None
            while idle:
                connection = idle.pop()
                if connection._ending and not resend:
                    ending = connection     # (its response's end is being told: see _finish)
                    continue
                transport = connection.transport
                if connection.idle_since > oldest and transport is not None \
                        and not transport.is_closing():
                    if ending is not None:
                        idle.append(ending)
                    framed = call._body
                    connection.start(call, head + framed if framed else head, call._size, now)
                    return call
                connection._close(abort=True)       # (too old, or closing)
            if ending is not None:
                idle.append(ending)
        self._open(call)
        return call

    def _open(self, call: Call) -> None:
        task = self.loop.create_task(self._connect(call))
        call._task = task
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, call: Call) -> None:
        """Open a connection for ``call`` within the connect timeout and its deadline."""
        loop = self.loop
        backend = self.backend
        connection = UpstreamConnection(self)
        wait, cut = self.connect_timeout, False
        if call._limit:
            left = call._limit - loop.time()
            if left < wait:
                wait, cut = max(_SHORTEST, left), True
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: connection, backend.host, backend.port,
                                       ssl=self._ssl, server_hostname=self._server_hostname),
                wait)
        except asyncio.CancelledError:
            if connection.transport is not None:
                connection.transport.abort()
            raise
        except CONNECT_FAILURES as exc:     # (the coroutine client's table)
            error = connect_error(exc, backend, cut=cut)
        else:
            self.opened += 1
            call._task = None
            if call._done:
                connection._state = _CLOSED
                if connection.transport is not None:
                    connection.transport.close()
                return
            data, body_bytes = call._take_held()
            connection.start(call, data, body_bytes)
            return
        call._task = None
        call._fail(error)

    def _discard(self, connection: UpstreamConnection) -> None:
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def idle(self) -> int:
        """Idle connections held now."""
        return len(self._idle)

    def close(self) -> None:
        """Close the idle connections now; those in use close when their response ends."""
        self.max_idle = 0
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                connection._close(abort=False)
            except RuntimeError:            # its loop is closed: nothing left to close
                pass

    def leave(self) -> None:
        """The backend left: :meth:`close`, on the pool's loop; safe from any thread."""
        self.max_idle = 0               # a response's end closes: none kept from now on
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            self.close()
            return
        try:
            self.loop.call_soon_threadsafe(self.close)
        except RuntimeError:            # its loop is closed: no callback will run
            self.close()


class UpstreamPools:
    """A :class:`BackendPool` per backend, made on first use (one per route's middleware)."""

    __slots__ = ("connect_timeout", "read_timeout", "ssl", "loop", "deadlines", "outbox",
                 "max_idle", "idle_timeout", "_pools")

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 ssl: ssl_module.SSLContext | None, loop: asyncio.AbstractEventLoop,
                 deadlines: Deadlines | None = None, max_idle: int = DEFAULT_MAX_IDLE,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, outbox: Outbox | None = None
                 ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ssl = ssl
        self.loop = loop
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        #: The writes held for the end of the loop's turn, shared by the pools (and with
        #: the server's connections when it gives its own).
        self.outbox = outbox if outbox is not None else Outbox(loop)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._pools: dict[str, BackendPool] = {}

    def pool(self, backend: Backend) -> BackendPool:
        """The pool for ``backend`` (same URL and server name, same pool:
        :func:`~lbmiddleware.upstream.pool.pool_for`)."""
        pool = self._pools.get(backend.url)
        if pool is not None and pool.backend is backend:
            return pool                 # (the backend it was made for: once per request)
        return pool_for(self._pools, backend, self._make)

    def _make(self, backend: Backend) -> BackendPool:
        return BackendPool(
            backend, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            loop=self.loop, deadlines=self.deadlines, ssl=self.ssl, max_idle=self.max_idle,
            idle_timeout=self.idle_timeout, outbox=self.outbox)

    def pools(self) -> tuple[BackendPool, ...]:
        """The pools held now: one per backend used and not forgotten since."""
        return tuple(self._pools.values())

    def forget(self, backends: Iterable[Backend]) -> None:
        """``backends`` left: their idle connections close now, the busy ones after their
        response, and one that comes back gets a new pool. Safe from any thread."""
        forget_pools(self._pools, backends)

    def close(self) -> None:
        """Close every idle connection; the busy ones close after their response (and no
        connection is kept from now on)."""
        self.max_idle = 0
        for pool in list(self._pools.values()):
            pool.close()
