"""One HTTP/1.1 client connection on an :class:`asyncio.Protocol`, for the ASGI proxy.

A :class:`_Connection` sends a request head and body and parses the response head; the
:class:`Response` it returns streams a ``Content-Length``, chunked or read-to-close body
under flow control (the socket stops being read while more than :data:`HIGH_WATER` bytes
wait). Pooling and connecting are :mod:`lbmiddleware.upstream`'s. Standard library only.

Interim ``1xx`` heads are skipped. A head that arrives while the request body is still
being sent is delivered at once and stops the upload (the connection is then not reused).
Anything outside the HTTP/1.1 grammar (a status outside 100-599, an unasked ``101``, a
control character, a chunk-size line that is not hex digits) is a :class:`ProtocolError`
and closes the connection; the ASGI proxy answers 502 and counts it as a failure of the
backend, as it would a 502 from the backend itself.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import TYPE_CHECKING, AsyncIterator

if TYPE_CHECKING:                        # the pool owns its connections: no import cycle
    from .deadlines import Deadlines
    from .pool import HostPool

__all__ = [
    "Response", "UpstreamError", "ConnectError", "ConnectTimeout", "ReadTimeout",
    "ProtocolError", "HIGH_WATER", "MAX_HEAD",
]

HIGH_WATER = 256 * 1024      # response bytes buffered before the socket is paused
MAX_HEAD = 64 * 1024         # a response head larger than this is an error


class UpstreamError(Exception):
    """An attempt failed. ``sent``: the request may have reached the backend."""

    sent = True
    timeout = False


class ConnectError(UpstreamError):
    """The connection could not be opened: nothing was sent."""

    sent = False


class ConnectTimeout(ConnectError):
    """Opening the connection took longer than ``connect_timeout``."""

    timeout = True


class ReadTimeout(UpstreamError):
    """No response head (or no next body bytes) within ``read_timeout``."""

    timeout = True


class ProtocolError(UpstreamError):
    """The connection closed or broke, or the backend sent something that is not HTTP/1.x."""


class _StaleConnection(ProtocolError):
    """A reused keep-alive connection closed before any response byte arrived."""


#: Statuses whose response never has a body, whatever its Content-Length says (RFC 9110).
NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# The grammar of RFC 9110 §5.6 and RFC 9112 §4 and §7.1, strictly: what the backend sends
# is passed on by an ASGI server that rejects control characters and odd statuses (uvicorn
# dropped the connection with a traceback), and two parsers that frame a body differently
# are a desync (nginx rejects ``0x5`` as a chunk size; Python's ``int()`` takes ``0x5``,
# `` 5`` and ``5_0``).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rb"(?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?"   # no controls but HTAB
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# One header line (after the CRLF ending the previous line): a token, a colon, the value
# without surrounding blanks. A line that does not match (obs-fold, no colon, a space
# before the colon, a control character) leaves the count of matches short of the count
# of lines: an error.
_HEADER_LINE = re.compile(rb"\r\n(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*(?=\r\n|$)")
_FIELD_LINE = re.compile(_TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*")     # one trailer line
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
# chunk-size [ chunk-ext ]: 1 to 16 hex digits (any 64-bit size), then extensions
# ``;name[=token or quoted-string]`` with optional blanks around ``;`` and ``=``.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:"
                         + _TOKEN + rb"|" + _QUOTED + rb"))?)*[ \t]*")
_BARE_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n").match     # the fast, usual case


class Response:
    """A response whose head has arrived; the body streams through :meth:`read`."""

    __slots__ = ("status", "reason", "headers", "_connection", "_chunks", "_buffered",
                 "complete", "_error", "_waiter", "_read_timeout", "_deadlines", "_loop",
                 "keep_alive")

    def __init__(self, status: int, reason: bytes, headers: list, read_timeout: float,
                 deadlines: "Deadlines", loop: asyncio.AbstractEventLoop) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers                  # [(name, value)] bytes, as received
        self.complete = False                   # every body byte has been received
        self.keep_alive = True
        self._connection: _Connection | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._read_timeout = read_timeout
        self._deadlines = deadlines
        self._loop = loop

    # -- fed by the connection ------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._connection is not None:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._connection = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._connection = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the proxy ------------------------------------------------------------------

    def take(self) -> bytes:
        """The body bytes received so far and not yet handed out (may be ``b""``)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._connection is not None:
            self._connection.resume_reading()
        return data

    async def read(self) -> bytes:
        """The next body bytes; ``b""`` at the end. Raises :class:`UpstreamError`."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            loop = self._loop
            self._waiter = waiter = loop.create_future()
            deadlines = self._deadlines
            timer = deadlines.start(self._read_timeout, _expire, waiter, loop)
            try:
                await waiter
            finally:
                deadlines.cancel(timer)
                self._waiter = None
            if waiter.result() is _TIMED_OUT and not self._chunks and not self.complete:
                self.close()
                raise ReadTimeout("no body bytes from the backend within the read timeout")
        return self.take()

    def close(self) -> None:
        """Done with the response: an unfinished body closes the connection."""
        connection = self._connection
        if connection is not None:
            self._connection = None
            connection.abort()
            if self._error is None:
                self._error = ProtocolError("the response was closed before its end")
            self._wake()
        self._chunks.clear()
        self._buffered = 0


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes requests, parses responses into :class:`Response`."""

    def __init__(self, pool: "HostPool", loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self._buffer = b""
        self._state = "idle"            # idle | head | length | chunked | eof | done
        self._remaining = 0             # body bytes left (length) or in the chunk (chunked)
        self._chunk_state = "size"      # size | data | crlf | trailer
        self._head_waiter: asyncio.Future | None = None
        self._response: Response | None = None
        # A response head parsed in the current read, handed to exchange() at the end of
        # the read: an error in the body bytes of that same read is then still a clean
        # failure (a 502 for the proxy's client), not a head followed by a broken body.
        self._answered: Response | None = None
        self._head_request = False
        self._read_timeout = 0.0
        self._got_bytes = False
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future | None = None
        # The whole request body has been written: until then the connection is never
        # reused (the rest of a body cut short would be read as the next request).
        self._request_sent = True

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        state = self._state
        if state == "length":
            remaining = self._remaining
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                self._response._feed(data)
                return
            if len(data) == remaining:
                self._response._feed(data)
                self._done()
                return
        if state in ("head", "length", "chunked", "eof"):
            self._buffer += data
            try:
                self._parse()
            except ProtocolError as exc:
                self._broken(exc)
                return
            answered = self._answered
            if answered is not None:
                self._answered = None
                waiter = self._head_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(answered)
        elif state == "idle":
            self._broken(ProtocolError("unexpected bytes on an idle connection"))
        # state "done": connection already handed back or closed; ignore

    def eof_received(self) -> bool | None:
        if self._state == "eof":
            self._done(keep_alive=False)
        else:
            self._broken(self._lost_error("the backend closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == "eof":
            self._done(keep_alive=False)
        elif self._state != "idle" and self._state != "done":
            self._broken(self._lost_error("the connection to the backend was lost"))
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
        if not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        self._state = "done"
        if self.transport is not None:
            self.transport.abort()

    # -- one exchange -----------------------------------------------------------------

    async def exchange(self, head: bytes, body, length: int | None, head_request: bool,
                       read_timeout: float) -> Response:
        """Send one request and wait for the response head."""
        loop = self.loop
        self.requests += 1
        self._state = "head"
        self._buffer = b""
        self._answered = None
        self._got_bytes = False
        self._head_request = head_request
        self._read_timeout = read_timeout
        self._head_waiter = waiter = loop.create_future()
        transport = self.transport
        try:
            if body is None or isinstance(body, (bytes, bytearray, memoryview)):
                transport.write(head + body if body else head)
            else:
                transport.write(head)
        except RuntimeError:
            # uvloop refuses a write on a transport the backend has just closed (its close
            # not yet seen by the protocol): the same as a connection lost before the head.
            self._broken(self._lost_error("the backend closed the connection"))
        if not waiter.done() and body is not None and not isinstance(
                body, (bytes, bytearray, memoryview)):
            self._request_sent = False
            await self._send_until_answered(body, length, read_timeout)
        if not waiter.done():
            deadlines = self.pool.deadlines
            timer = deadlines.start(read_timeout, _expire, waiter, loop)
            try:
                await waiter
            finally:
                deadlines.cancel(timer)
        result = waiter.result()
        if result is _TIMED_OUT:
            self.abort()
            raise ReadTimeout("no response head from the backend within the read timeout")
        if isinstance(result, BaseException):
            raise result
        return result

    async def _send_until_answered(self, body: AsyncIterator[bytes], length: int | None,
                                   read_timeout: float) -> None:
        """Stream the request body until it ends or the response head (or an error) comes.

        A backend may answer before it has read the body (a 413 for an upload too large, a
        401, a redirect) and then never read the rest: waiting for the upload to drain would
        run out the read timeout and throw the answer away. The upload is stopped instead
        and the answer delivered; the connection is not reused (``_request_sent`` stays
        false). Errors of the upload are raised unless the answer came first.
        """
        waiter = self._head_waiter
        sender = self.loop.create_task(self._send_stream(body, length, read_timeout))
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

    async def _send_stream(self, body: AsyncIterator[bytes], length: int | None,
                           read_timeout: float) -> None:
        transport = self.transport
        sent = 0
        async for chunk in body:
            if self.closed or self._head_waiter.done():
                break               # the backend answered (or failed) before the body ended
            if not chunk:
                continue
            sent += len(chunk)
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
        timer = deadlines.start(read_timeout, _expire, drain, self.loop)
        try:
            await drain
        finally:
            deadlines.cancel(timer)
            self._drain = None
        if drain.result() is _TIMED_OUT:
            self.abort()
            raise ReadTimeout("the backend stopped reading the request body")

    # -- parsing ------------------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            state = self._state
            if state == "head":
                if not self._parse_head():
                    return
            elif state == "length":
                buffer = self._buffer
                if not buffer:
                    return
                take = buffer[: self._remaining]
                self._buffer = buffer[len(take):]
                self._remaining -= len(take)
                self._response._feed(take)
                if self._remaining == 0:
                    self._done()
                return
            elif state == "chunked":
                if not self._parse_chunked():
                    return
            elif state == "eof":
                if self._buffer:
                    data, self._buffer = self._buffer, b""
                    self._response._feed(data)
                return
            else:
                if self._buffer:
                    raise ProtocolError("the backend sent bytes after the response")
                return

    def _parse_head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("the response head is too large")
            return False
        head = buffer[:end]
        self._buffer = buffer[end + 4:]
        if b"\0" in head or head.count(b"\n") != head.count(b"\r"):
            raise ProtocolError("a bare CR, LF or NUL in the response head")
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
                or _CONTROL.search(reason):
            raise ProtocolError(f"the backend's response is not HTTP/1.x: {status_line[:80]!r}")
        status = int(code)
        if not 100 <= status <= 599:
            raise ProtocolError(f"the backend's status {status} is outside 100-599")
        if status == 101:       # never asked for: the proxy sends no Upgrade
            raise ProtocolError("the backend switched protocols (101) unasked")
        headers = _HEADER_LINE.findall(head, max(line_end, 0)) if line_end >= 0 else []
        if len(headers) != head.count(b"\r\n"):
            raise ProtocolError(f"a malformed response header line: {_bad_line(head)!r}")
        if status < 200:
            return True         # an interim response (100, 102, 103): the real one follows
        length = None
        chunked = False
        keep_alive = version == b"HTTP/1.1"
        for name, value in headers:
            lower = name.lower()
            if lower not in _FRAMING_HEADERS:
                continue
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise ProtocolError("a bad Content-Length in the response")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    keep_alive = False          # some other coding: read to the close
                    length = -1
            else:
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        response = Response(status, reason, headers, self._read_timeout, self.pool.deadlines,
                            self.loop)
        response.keep_alive = keep_alive
        response._connection = self
        self._response = response
        if self._head_request or status in NO_BODY_STATUSES:
            self._state = "length"
            self._remaining = 0
        elif chunked:
            self._state = "chunked"
            self._chunk_state = "size"
        elif length is not None and length >= 0:
            self._state = "length"
            self._remaining = length
        else:
            self._state = "eof"
            response.keep_alive = False
        self._answered = response
        if self._state == "length" and self._remaining == 0:
            self._done()
            return False
        return True

    def _parse_chunked(self) -> bool:
        """Decode as much of the chunked body as the buffer holds; True when done.

        Walks the buffer with an offset, cuts it once and feeds the body once per read:
        slicing each line off the front re-copied the rest of the buffer, so 200,000
        one-byte chunks in one write held the event loop for seconds.
        """
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        state = self._chunk_state
        parts: list[bytes] = []
        done = False
        while True:
            if state == "data":
                if pos == size:
                    break
                end = min(pos + self._remaining, size)
                parts.append(buffer[pos:end])
                self._remaining -= end - pos
                pos = end
                if self._remaining:
                    break
                state = "crlf"
            elif state == "size" and (line := _BARE_SIZE_LINE(buffer, pos)) is not None:
                # The usual line, a size alone: a chunk that is all here is taken at once.
                remaining = int(line.group(1), 16)
                start = line.end()
                end = start + remaining
                if remaining and end + 2 <= size and buffer.startswith(b"\r\n", end):
                    parts.append(buffer[start:end])
                    pos = end + 2
                    continue
                pos = start
                self._remaining = remaining
                state = "data" if remaining else "trailer"
            elif state == "crlf":
                if not buffer.startswith(b"\r\n", pos):
                    if size - pos >= 2 or (size > pos and not buffer.startswith(b"\r", pos)):
                        raise ProtocolError("a chunk is longer than its size")
                    break
                pos += 2
                state = "size"
            else:
                end = buffer.find(b"\r\n", pos, pos + MAX_HEAD + 2)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        raise ProtocolError("a chunk header or trailer is too large")
                    break
                if state == "size":
                    match = _CHUNK_LINE.fullmatch(buffer, pos, end)
                    if match is None:
                        raise ProtocolError(
                            f"a bad chunk size line in the response: {buffer[pos:end][:40]!r}")
                    self._remaining = int(match.group(1), 16)
                    state = "data" if self._remaining else "trailer"
                elif end == pos:            # the empty line after the trailers (dropped)
                    pos, done = end + 2, True
                    break
                elif _FIELD_LINE.fullmatch(buffer, pos, end) is None:
                    raise ProtocolError(
                        f"a malformed trailer line in the response: {buffer[pos:end][:80]!r}")
                pos = end + 2
        self._chunk_state = state
        self._buffer = buffer[pos:] if pos else buffer
        if parts:
            self._response._feed(parts[0] if len(parts) == 1 else b"".join(parts))
        if done:
            self._done()
        return done

    # -- endings ------------------------------------------------------------------------

    def _done(self, keep_alive: bool = True) -> None:
        response = self._response
        self._response = None
        self._state = "done"
        reuse = keep_alive and response is not None and response.keep_alive \
            and not self.closed and not self._buffer and self._request_sent
        if response is not None:
            response._finish()
        if reuse:
            self._state = "idle"
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            self.pool._release(self)
        elif not self.closed:
            self.closed = True
            if self._request_sent:
                self.transport.close()
            else:               # the rest of an upload the backend will not read: drop it
                self.transport.abort()

    def _lost_error(self, message: str) -> ProtocolError:
        if self.requests > 1 and not self._got_bytes and self._state == "head":
            return _StaleConnection(message + " (a reused idle connection)")
        return ProtocolError(message)

    def _broken(self, exc: ProtocolError) -> None:
        self._state = "done"
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiter = self._head_waiter
        answered, self._answered = self._answered, None
        if waiter is not None and not waiter.done():
            # No head handed over yet (none came, or one came in this same read): a
            # complete response stands; else the attempt fails cleanly (a 502, not a cut
            # response), as nothing has reached the proxy's client.
            waiter.set_result(answered if answered is not None and answered.complete else exc)
            self._response = None
        elif self._response is not None:
            self._response._fail(exc)
            self._response = None


def _bad_line(head: bytes) -> bytes:
    """The first header line of ``head`` outside the grammar (for the error message)."""
    for line in head.split(b"\r\n")[1:]:
        if _FIELD_LINE.fullmatch(line) is None:
            return line[:80]
    return b""
