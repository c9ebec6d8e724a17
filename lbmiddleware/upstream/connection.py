"""One HTTP/1.1 client connection on an :class:`asyncio.Protocol`, for the proxy front-ends.

A :class:`Connection` does the I/O of one exchange at a time: it writes the request head
and body, feeds what the socket delivers to a :class:`~.parser.ResponseParser` (the
grammar lives there, without I/O), hands the head over as a :class:`~.response.Response`
and streams the body into it under flow control. Timeouts run on the pool's
:class:`~.deadlines.Deadlines`. Pooling and connecting are :mod:`.pool`'s.

A head that arrives while the request body is still being sent is delivered at once and
stops the upload (the connection is then not reused). A :class:`~.errors.ProtocolError`
from the parser closes the connection; the proxy answers 502 and counts it as a failure
of the backend, as it would a 502 from the backend itself. Standard library only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .deadlines import TIMED_OUT, Deadlines, expire
from .errors import ProtocolError, ReadTimeout, StaleConnection, TLSError, UpstreamError
from .parser import ResponseParser
from .response import Response
from .tls import handshake_verdict, tls_failure_text

__all__ = ["Connection", "Owner"]

_IDLE = "idle"              # no exchange: bytes from the backend now are an error
_BUSY = "busy"              # an exchange: the parser reads the response
_DONE = "done"              # closed, or handed back to the pool

# What the head waiter ends with when the caller's head_timeout (a request's deadline) ran
# out: told from the read timeout's TIMED_OUT, so that the error can say which.
_DEADLINE = object()


def _cut(waiter: asyncio.Future[Any]) -> None:
    """The head_timeout's callback: the waiter ends with :data:`_DEADLINE`."""
    if not waiter.done():
        waiter.set_result(_DEADLINE)


class Owner(Protocol):
    """What a connection needs of its pool (the pool imports this module, not the
    other way round): the shared timers, and where a reusable connection goes back."""

    deadlines: Deadlines

    def _release(self, connection: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes requests, reads responses into :class:`Response`."""

    def __init__(self, pool: Owner, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self._state = _IDLE
        self._parser = ResponseParser()
        # Ends with the Response, an error, or TIMED_OUT: whichever comes first.
        self._head_waiter: asyncio.Future[Any] | None = None
        self._response: Response | None = None
        self._read_timeout = 0.0
        self._got_bytes = False
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future[object] | None = None
        # The whole request body has been written: until then the connection is never
        # reused (the rest of a body cut short would be read as the next request).
        self._request_sent = True
        #: Request body bytes written in the current (or last) exchange.
        self.body_sent = 0
        # Why a connection never used was closed before its first request (a TLS 1.3
        # backend's verdict on the client's certificate, read before the request is written).
        self._refused: UpstreamError | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # loop.create_connection() gives a stream protocol a Transport; typeshed's
        # Protocol.connection_made declares the base class.
        self.transport = transport      # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._state != _BUSY:
            if self._state == _IDLE:
                self._broken(ProtocolError("unexpected bytes on an idle connection"))
            return              # done: the connection was handed back or closed
        parser = self._parser
        try:
            body = parser.feed(data)
        except ProtocolError as exc:
            # No head handed over yet (none came, or one came in this same read): the
            # attempt fails cleanly (a 502, not a cut response), as nothing has reached
            # the proxy's client. Else the body breaks.
            self._broken(exc)
            return
        response = self._response
        answered = None
        if response is None:
            head = parser.head
            if head is None:
                return          # the head is not all here yet
            response = answered = self._response = Response(
                head, self, self._read_timeout, self.pool.deadlines, self.loop)
        if body:
            response._feed(body)
        if parser.complete:
            self._done()
        if answered is not None:
            # Handed over at the end of the read: a head and its whole body in one read
            # arrive as a complete response.
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(answered)

    def eof_received(self) -> bool | None:
        if self._state == _BUSY:
            self._end_of_input("the backend closed the connection")
        else:
            self._broken(self._lost_error("the backend closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _BUSY:
            if isinstance(exc, ssl.SSLError):
                self._tls_failed(exc)
            else:
                self._end_of_input("the connection to the backend was lost")
        elif self.requests == 0 and handshake_verdict(exc):
            self._refused = TLSError(tls_failure_text(exc))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- flow control (called by Response) ---------------------------------------------

    def pause_reading(self) -> None:
        if not self._paused and not self.closed and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def is_open(self) -> bool:
        """Not closed by either side (as far as the loop has told us)."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def close(self) -> None:
        """Close once what was written is sent (an idle connection the pool won't keep)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._state = _DONE
        if self.transport is not None:
            self.transport.abort()

    # -- one exchange -----------------------------------------------------------------

    async def exchange(self, head: bytes,
                       body: bytes | bytearray | memoryview | AsyncIterator[bytes] | None,
                       length: int | None, head_request: bool,
                       read_timeout: float, head_timeout: float | None = None) -> Response:
        """Send one request and wait for the response head: at most ``read_timeout``
        seconds once the request is sent and, with ``head_timeout``, at most that long from
        now, the upload included (a request's deadline: :class:`ReadTimeout` with
        ``deadline`` set)."""
        transport = self.transport
        if transport is None:
            raise ProtocolError("the connection to the backend is not open")
        if self._refused is not None:
            raise self._refused
        loop = self.loop
        self.requests += 1
        self._state = _BUSY
        self._parser = ResponseParser(head_request=head_request)
        self._got_bytes = False
        self._read_timeout = read_timeout
        self._head_waiter = waiter = loop.create_future()
        deadlines = self.pool.deadlines
        cut = None if head_timeout is None else deadlines.start(head_timeout, _cut, waiter, loop)
        try:
            streamed = None
            if body is None or isinstance(body, (bytes, bytearray, memoryview)):
                data = head + body if body else head
                self.body_sent = len(body) if body else 0
            else:
                streamed, data = body, head
                self.body_sent = 0
            try:
                transport.write(data)
            except RuntimeError:
                # uvloop refuses a write on a transport the backend has just closed (its
                # close not yet seen by the protocol): the same as a connection lost before
                # the head.
                self._broken(self._lost_error("the backend closed the connection"))
            if not waiter.done() and streamed is not None:
                self._request_sent = False
                await self._send_until_answered(transport, streamed, length, read_timeout,
                                                waiter)
            if not waiter.done():
                timer = deadlines.start(read_timeout, expire, waiter, loop)
                try:
                    await waiter
                finally:
                    deadlines.cancel(timer)
        finally:
            if cut is not None:
                deadlines.cancel(cut)
        result = waiter.result()
        if result is TIMED_OUT or result is _DEADLINE:
            self.abort()
            error = ReadTimeout("no response head from the backend within the read timeout")
            error.deadline = result is _DEADLINE
            raise error
        if isinstance(result, BaseException):
            raise result
        return result       # type: ignore[no-any-return]  # the waiter's third end: the Response

    async def _send_until_answered(self, transport: asyncio.Transport,
                                   body: AsyncIterator[bytes], length: int | None,
                                   read_timeout: float, waiter: asyncio.Future[Any]) -> None:
        """Stream the request body until it ends or the response head (or an error) comes.

        A backend may answer before it has read the body (a 413 for an upload too large, a
        401, a redirect) and then never read the rest: waiting for the upload to drain would
        run out the read timeout and throw the answer away. The upload is stopped instead
        and the answer delivered; the connection is not reused (``_request_sent`` stays
        false). Errors of the upload are raised unless the answer came first.
        """
        sender = self.loop.create_task(
            self._send_stream(transport, body, length, read_timeout, waiter))
        try:
            await asyncio.wait((sender, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sender.done():
                sender.cancel()
                await asyncio.wait((sender,))       # the body's iterator is closed first
        if sender.cancelled():
            return
        error = sender.exception()
        if error is not None and not (waiter.done() and isinstance(error, UpstreamError)):
            raise error

    async def _send_stream(self, transport: asyncio.Transport, body: AsyncIterator[bytes],
                           length: int | None, read_timeout: float,
                           answered: asyncio.Future[Any]) -> None:
        sent = 0
        async for chunk in body:
            if self.closed or answered.done():
                break               # the backend answered (or failed) before the body ended
            if not chunk:
                continue
            sent += len(chunk)
            self.body_sent = sent
            if length is None:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                if sent > length:
                    self.abort()
                    raise ProtocolError("the request body is longer than its Content-Length")
                transport.write(chunk)
            if self._write_paused:
                await self._wait_drain(read_timeout)
        else:
            if length is None:
                transport.write(b"0\r\n\r\n")
            elif sent != length and not self.closed:
                self.abort()
                raise ProtocolError("the request body ended before its Content-Length")
            self._request_sent = True

    async def _wait_drain(self, read_timeout: float) -> None:
        self._drain = drain = self.loop.create_future()
        deadlines = self.pool.deadlines
        timer = deadlines.start(read_timeout, expire, drain, self.loop)
        try:
            await drain
        finally:
            deadlines.cancel(timer)
            self._drain = None
        if drain.result() is TIMED_OUT:
            self.abort()
            raise ReadTimeout("the backend stopped reading the request body")

    # -- endings ------------------------------------------------------------------------

    def _end_of_input(self, message: str) -> None:
        """The backend closed (or TLS broke: ``message`` says it) during an exchange: the
        end of a read-until-close body, else a response cut short."""
        try:
            self._parser.feed_eof()
        except ProtocolError:
            self._broken(self._lost_error(message))
        else:
            self._done(keep_alive=False)

    def _done(self, keep_alive: bool = True) -> None:
        response = self._response
        self._response = None
        self._state = _DONE
        reuse = keep_alive and response is not None and response.keep_alive \
            and not self.closed and not self._parser.trailing_data and self._request_sent
        if response is not None:
            response._finish()
        transport = self.transport
        if reuse:
            self._state = _IDLE
            if self._paused:
                self._paused = False
                if transport is not None:
                    transport.resume_reading()
            self.pool._release(self)
        elif not self.closed:
            self.closed = True
            if transport is None:
                pass
            elif self._request_sent:
                transport.close()
            else:               # the rest of an upload the backend will not read: drop it
                transport.abort()

    def _tls_failed(self, exc: ssl.SSLError) -> None:
        """TLS broke the connection during an exchange. Before the first answer's first byte
        a TLS alert is the backend's verdict on the handshake (TLS 1.3 gives it on the
        client's certificate once the client has sent its request): a failed connect, the
        request unread (:class:`TLSError`). Otherwise an end of input, in TLS's words (a
        body read to the close still ends there)."""
        text = tls_failure_text(exc)
        if self.requests == 1 and not self._got_bytes and handshake_verdict(exc):
            self._broken(TLSError(text))
        else:
            self._end_of_input(text)

    def _lost_error(self, message: str) -> ProtocolError:
        if self.requests > 1 and not self._got_bytes and self._state == _BUSY:
            return StaleConnection(message + " (a reused idle connection)")
        return ProtocolError(message)

    def _broken(self, exc: UpstreamError) -> None:
        self._state = _DONE
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(exc)
            self._response = None
        elif self._response is not None:
            self._response._fail(exc)
            self._response = None
