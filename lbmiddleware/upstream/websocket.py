"""The proxy's upstream WebSocket client (RFC 6455): the opening handshake on a fresh
connection to a backend, then whole messages both ways. Standard library only.

Chosen by measurement over the ``websockets`` package's client and ``wsproto`` on an
asyncio protocol (``benchmarks/bench_websocket.py --clients``; numbers in
``benchmarks/README.md``): a proxy needs only a client's part of the protocol (masked
frames out, unmasked frames in, no extension), and doing just that on an
:class:`asyncio.Protocol` gives the most echo round trips per second; it costs no
dependency, so the ASGI middleware proxies WebSockets with the standard library alone.

* :func:`open_websocket` connects (the pool's connect timeout, TLS context and ``Host``),
  sends the handshake with the caller's headers and offered subprotocols, and reads the
  answer with the HTTP parser of :mod:`.parser`: a ``101`` that passes RFC 6455 section
  4.1's checks gives a :class:`WebSocket`; any other status gives a :class:`Refusal` (its
  head and a body of at most :data:`MAX_REFUSAL_BODY` bytes) for the caller to pass on.
  Failures are the upstream client's errors (:mod:`.errors`): ``sent`` false for a connect
  failure, ``timeout`` for a timeout, :class:`~.errors.ProtocolError` for a bad answer.
* :class:`WebSocket` relays messages, not frames: :meth:`WebSocket.receive` gives the next
  whole message (``str`` for text, ``bytes`` for binary) or a :class:`Closed`;
  :meth:`WebSocket.send` writes one, waiting while the backend does not read (TCP
  backpressure). Fragments are joined; the backend's pings are answered here (the proxy's
  own business: the client's pings are its server's; while the backend does not read,
  only its latest ping, once it does); pongs are dropped.
* Flow control: while more than :data:`~.response.HIGH_WATER` bytes of messages wait to be
  taken, the socket is not read, so a slow client slows the backend down through TCP. A
  message larger than :data:`MAX_MESSAGE` closes the socket with 1009.
* Closing: :meth:`WebSocket.close` sends a close frame and waits (at most
  :data:`CLOSE_TIMEOUT`) for the backend's; a close frame from the backend is answered
  with its code. A connection lost without a close frame is ``Closed(1006)``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import ssl
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .deadlines import TIMED_OUT, expire
from .errors import ConnectError, ConnectTimeout, ProtocolError, ReadTimeout, TLSError
from .parser import ResponseParser
from .response import HIGH_WATER
from .tls import handshake_verdict, tls_failure_text

if TYPE_CHECKING:
    from .pool import HostPool

__all__ = ["open_websocket", "WebSocket", "Refusal", "Closed", "FrameParser", "FrameError",
           "frame", "mask", "MAX_MESSAGE", "MAX_FRAGMENTS", "MAX_REFUSAL_BODY", "CLOSE_TIMEOUT",
           "HANDSHAKE_HEADERS"]

#: Bytes of one message, at most (uvicorn's own limit for its clients' messages, 16 MiB).
MAX_MESSAGE = 16 * 1024 * 1024
#: Frames of one message in fragments, at most (16 MiB in pieces of 256 bytes): a backend
#: sending endless empty or tiny continuations is closed with 1009.
MAX_FRAGMENTS = 65536
#: Bytes of the body of a backend's refusal (a non-101 answer) passed on, at most.
MAX_REFUSAL_BODY = 1024 * 1024
#: Seconds to wait for the backend's close frame (and its end of the connection).
CLOSE_TIMEOUT = 5.0

#: Request headers the client makes itself: a caller's are dropped (RFC 6455 section 4.1).
HANDSHAKE_HEADERS = frozenset({b"sec-websocket-key", b"sec-websocket-version",
                               b"sec-websocket-extensions", b"sec-websocket-protocol",
                               b"sec-websocket-accept", b"upgrade", b"connection"})

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Opcodes (RFC 6455 section 5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL = frozenset({CLOSE, PING, PONG})

# Close codes (RFC 6455 section 7.4.1).
NORMAL, GOING_AWAY, PROTOCOL_ERROR, NO_STATUS, ABNORMAL, INVALID_DATA, TOO_BIG = (
    1000, 1001, 1002, 1005, 1006, 1007, 1009)
# Codes that may be sent in a close frame: 1000-1003, 1007-1014 and 3000-4999.
_SENDABLE = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))


def sendable(code: int) -> bool:
    """May ``code`` go in a close frame? (1005, 1006 and 1015 only report.)"""
    return code in _SENDABLE or 3000 <= code <= 4999


class FrameError(Exception):
    """The backend broke the protocol: ``code`` is the close code to answer it with."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class Closed(NamedTuple):
    """How the WebSocket ended: the close ``code`` and ``reason`` the backend sent (1005:
    a close frame without a code; 1006: no close frame, the connection was lost), and
    ``error``, the client's words when it was not a clean close (a broken frame, a lost
    connection), else ``None``."""

    code: int
    reason: str = ""
    error: str | None = None


class Refusal(NamedTuple):
    """The backend's answer to the handshake when it is not ``101``: status, reason,
    headers (bytes pairs, as received) and the whole body."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 section 5.3), in C speed: the
    bytes as one integer each (a Python loop over bytes is 50 times slower)."""
    size = len(data)
    if not size:
        return b""
    keys = key * (size >> 2) + key[: size & 3]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        size, "little")


def frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final frame, masked with ``key`` (a client's frames are always masked: a fresh
    random key each when ``None``)."""
    size = len(payload)
    if key is None:
        key = os.urandom(4)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, size)
    return head + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code and a reason cut to fit 123 bytes of UTF-8."""
    if code == NO_STATUS:
        return b""
    text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + text


class FrameParser:
    """Frames from the backend in, whole messages and control frames out (sans I/O).

    :meth:`feed` returns ``(opcode, payload)`` pairs: ``TEXT`` or ``BINARY`` with a whole
    message (fragments joined), ``CLOSE``, ``PING`` or ``PONG`` with their payload. A
    server's frames are unmasked, carry no reserved bit (no extension was offered), and a
    control frame is final and at most 125 bytes: anything else raises
    :class:`FrameError` with the close code to answer (1002, or 1009 beyond ``max_message``).

    A message's fragments are held in one buffer (what a message in fragments holds is
    its payload, not an object per fragment), and at most ``max_fragments`` of them make a
    message: endless tiny or empty continuations also end in 1009.
    """

    __slots__ = ("max_message", "max_fragments", "_buffer", "_fragments", "_fragment_opcode",
                 "_fragment_size", "_fragment_count")

    def __init__(self, max_message: int = MAX_MESSAGE,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._fragment_count = 0        # frames of the message in fragments so far
        self._buffer = bytearray()
        self._fragments = bytearray()   # the payload of a message in fragments so far
        self._fragment_opcode = 0       # the opcode of a message in fragments; 0: none
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, bytes]] = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "the backend sent a masked frame")
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "the backend set a reserved bit")
            size = second & 0x7F
            at = start + 2
            if size == 126:
                if end - at < 2:
                    break
                size = (buffer[at] << 8) | buffer[at + 1]
                at += 2
            elif size == 127:
                if end - at < 8:
                    break
                size = int.from_bytes(buffer[at:at + 8], "big")
                at += 8
            opcode = first & 0x0F
            final = first & 0x80
            if opcode in _CONTROL:
                if size > 125 or not final:
                    raise FrameError(PROTOCOL_ERROR, "a control frame longer than 125 bytes "
                                                     "or fragmented")
            elif opcode not in _DATA:
                raise FrameError(PROTOCOL_ERROR, f"the backend sent opcode {opcode:#x}")
            elif self._fragment_size + size > self.max_message:
                raise FrameError(TOO_BIG, f"a message from the backend is larger than "
                                          f"{self.max_message} bytes")
            if end - at < size:
                break
            payload = bytes(buffer[at:at + size])
            start = at + size
            if opcode in _CONTROL:
                out.append((opcode, payload))
            elif opcode == CONTINUATION:
                if not self._fragment_opcode:
                    raise FrameError(PROTOCOL_ERROR, "a continuation frame with no message "
                                                     "to continue")
                self._fragment_count += 1
                if self._fragment_count > self.max_fragments:
                    raise FrameError(TOO_BIG, f"a message from the backend in more than "
                                              f"{self.max_fragments} fragments")
                self._fragments += payload
                self._fragment_size += size
                if final:
                    out.append((self._fragment_opcode, bytes(self._fragments)))
                    self._fragments = bytearray()
                    self._fragment_opcode = self._fragment_size = self._fragment_count = 0
            elif self._fragment_opcode:
                raise FrameError(PROTOCOL_ERROR, "a new message before the last one ended")
            elif final:
                out.append((opcode, payload))
            else:
                self._fragment_opcode = opcode
                self._fragments = bytearray(payload)
                self._fragment_size = size
                self._fragment_count = 1
        if start:
            del buffer[:start]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held: a frame not all here yet, and the fragments of a message."""
        return len(self._buffer) + self._fragment_size


_HANDSHAKE = "handshake"    # the answer to the handshake is being read
_REFUSED = "refused"        # a non-101 answer: its body is being read
_OPEN = "open"              # messages both ways
_CLOSING = "closing"        # our close frame is sent: waiting for the backend's
_CLOSED = "closed"


class WebSocket(asyncio.Protocol):
    """One upstream WebSocket: the handshake's answer, then messages (see the module)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: bytes, offered: Sequence[str],
                 max_message: int = MAX_MESSAGE) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.subprotocol: str | None = None     # the one the backend chose
        self.headers: list[tuple[bytes, bytes]] = []    # its 101's headers, as received
        self.closed: Closed | None = None       # how it ended, once it has
        self._state = _HANDSHAKE
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._offered = offered
        self._http = ResponseParser(allow_upgrade=True)
        self._answered = False      # a byte of the handshake's answer came
        self._refusal: Refusal | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._frames = FrameParser(max_message)
        # (message, its size in bytes) in order; how it ended last
        self._messages: collections.deque[tuple[str | bytes | Closed, int]] = \
            collections.deque()
        self._queued = 0            # message bytes waiting to be taken
        self._paused = False
        self._write_paused = False
        self._pong: bytes | None = None     # the last ping's payload, while writes wait
        self._drain: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[Any] | None = None  # the handshake's, then receive()'s
        self._close_sent = False
        self._lost = loop.create_future()               # set when the connection is lost
        #: Message payload bytes sent to the backend and received from it.
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]  # a stream's Transport

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is _OPEN or state is _CLOSING:
            self._frames_received(data)
        elif state is _HANDSHAKE:
            self._answer_received(data)
        elif state is _REFUSED:
            self._refusal_body(data)

    def eof_received(self) -> bool | None:
        if self._state is _REFUSED:
            try:
                self._http.feed_eof()
            except ProtocolError as exc:
                self._fail(exc)
            else:
                self._refused()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._state = _CLOSED
        if not self._lost.done():
            self._lost.set_result(None)
        if state is _HANDSHAKE and not self._answered and handshake_verdict(exc):
            # a TLS alert before any answer: the backend's verdict on the TLS handshake
            # (TLS 1.3 says a client certificate is refused after our side of it ended)
            self._fail(TLSError(tls_failure_text(exc)))
        elif state is _HANDSHAKE or state is _REFUSED:
            self._fail(ProtocolError("the backend closed the connection during the "
                                     "WebSocket handshake"))
        elif self.closed is None:
            self._end(Closed(ABNORMAL, "", "the backend closed the connection without a "
                                           "close frame"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        pong, self._pong = self._pong, None
        if pong is not None and not self._close_sent and self.transport is not None:
            self.transport.write(frame(PONG, pong))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the handshake ------------------------------------------------------------------

    def _answer_received(self, data: bytes) -> None:
        self._answered = True
        parser = self._http
        try:
            body = parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        head = parser.head
        if head is None:
            return
        if head.status != 101:
            self._state = _REFUSED
            self._refusal = Refusal(head.status, head.reason, head.headers, b"")
            self._refusal_body(body, fed=True)
            return
        try:
            self.subprotocol = self._check(head.headers)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self.headers = head.headers
        self._state = _OPEN
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self)
        rest = parser.trailing_data
        if rest:
            self._frames_received(rest)

    def _check(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The subprotocol a ``101`` chose, once its headers pass RFC 6455 section 4.1."""
        upgrade = connection = accept = b""
        protocol: str | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"upgrade":
                upgrade = value.lower()
            elif lower == b"connection":
                connection = value.lower()
            elif lower == b"sec-websocket-accept":
                accept = value.strip()
            elif lower == b"sec-websocket-protocol":
                protocol = value.strip().decode("latin-1")
            elif lower == b"sec-websocket-extensions":
                raise ProtocolError("the backend chose a WebSocket extension none was offered")
        if upgrade != b"websocket" or b"upgrade" not in {
                t.strip() for t in connection.split(b",")}:
            raise ProtocolError("the backend's 101 is not a WebSocket upgrade")
        if accept != self._accept:
            raise ProtocolError("the backend's Sec-WebSocket-Accept does not match its key")
        if protocol is not None and protocol not in self._offered:
            raise ProtocolError(f"the backend chose the subprotocol {protocol!r}, which was "
                                f"not offered")
        return protocol

    def _refusal_body(self, data: bytes, fed: bool = False) -> None:
        parser = self._http
        if not fed:
            try:
                data = parser.feed(data)
            except ProtocolError as exc:
                self._fail(exc)
                return
        if data:
            self._body_size += len(data)
            if self._body_size > MAX_REFUSAL_BODY:
                self._fail(ProtocolError(f"the backend's answer to the WebSocket handshake "
                                         f"is longer than {MAX_REFUSAL_BODY} bytes"))
                return
            self._body.append(data)
        if parser.complete:
            self._refused()

    def _refused(self) -> None:
        refusal = self._refusal
        if refusal is None:
            return
        self._refusal = None
        self._state = _CLOSED
        if self.transport is not None:
            self.transport.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(refusal._replace(body=b"".join(self._body)))

    def _fail(self, exc: BaseException) -> None:
        self._state = _CLOSED
        if self.transport is not None:
            self.transport.abort()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(exc)

    # -- messages in --------------------------------------------------------------------

    def _frames_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            self._broken(exc.code, str(exc))
            return
        for opcode, payload in frames:
            if opcode == BINARY:
                self._queue(payload, len(payload))
            elif opcode == TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._broken(INVALID_DATA, "the backend sent a text message that is not "
                                               "UTF-8")
                    return
                self._queue(text, len(payload))
            elif opcode == PING:
                if self._write_paused:
                    # the backend does not read: no pong piles up in the write buffer;
                    # the latest ping is answered on resume (RFC 6455 section 5.5.3)
                    self._pong = payload
                elif not self._close_sent and self.transport is not None:
                    self.transport.write(frame(PONG, payload))
            elif opcode == CLOSE:
                self._close_received(payload)
                return
        if self._queued > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _queue(self, message: str | bytes, size: int) -> None:
        self._messages.append((message, size))
        self._queued += size
        self.bytes_received += size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close_received(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._broken(PROTOCOL_ERROR, "a close frame with a 1-byte payload")
            return
        code, reason = NO_STATUS, ""
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._broken(INVALID_DATA, "a close reason that is not UTF-8")
                return
            if not sendable(code):
                self._broken(PROTOCOL_ERROR, f"the backend closed with code {code}, which "
                                             f"may not be sent")
                return
        transport = self.transport
        if not self._close_sent and transport is not None:
            self._close_sent = True
            transport.write(frame(CLOSE, payload[:2]))      # the code echoed (section 5.5.1)
        self._end(Closed(code, reason))
        if transport is not None:
            transport.close()

    def _broken(self, code: int, text: str) -> None:
        """The backend broke the protocol: close with ``code`` and drop the connection."""
        transport = self.transport
        if not self._close_sent and transport is not None:
            self._close_sent = True
            transport.write(frame(CLOSE, close_payload(code)))
        self._end(Closed(ABNORMAL, "", text))
        if transport is not None:
            transport.close()

    def _end(self, closed: Closed) -> None:
        if self.closed is None:
            self.closed = closed
            self._messages.append((closed, 0))
        self._state = _CLOSED
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> str | bytes | Closed:
        """The next whole message from the backend, or how the WebSocket ended (then
        again at every call)."""
        messages = self._messages
        while not messages:
            self._waiter = waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message, size = messages[0]
        if isinstance(message, Closed):
            return message
        messages.popleft()
        self._queued -= size
        if self._paused and self._queued <= HIGH_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return message

    # -- messages out -------------------------------------------------------------------

    async def send(self, message: str | bytes) -> bool:
        """Send one whole message; waits while the backend does not read. False when the
        WebSocket is closing or closed (the message is dropped)."""
        transport = self.transport
        if self._close_sent or self._state is not _OPEN or transport is None:
            return False
        if isinstance(message, str):
            payload = message.encode("utf-8")
            transport.write(frame(TEXT, payload))
        else:
            payload = message
            transport.write(frame(BINARY, payload))
        self.bytes_sent += len(payload)
        if self._write_paused:
            self._drain = drain = self.loop.create_future()
            try:
                await drain
            finally:
                self._drain = None
        return True

    async def close(self, code: int = NORMAL, reason: str = "",
                    timeout: float = CLOSE_TIMEOUT) -> None:
        """Close with ``code`` (one that may not be sent, such as 1006 for a client gone,
        becomes 1001) and wait up to ``timeout`` seconds for the backend's close frame
        and its end of the connection; then the connection is closed in any case."""
        transport = self.transport
        if transport is None:
            return
        if not self._close_sent and self._state is _OPEN:
            self._close_sent = True
            self._state = _CLOSING
            if code != NO_STATUS and not sendable(code):
                code, reason = GOING_AWAY, ""
            transport.write(frame(CLOSE, close_payload(code, reason)))
        if not self._lost.done():
            waiter = self._lost
            timer = self.loop.call_later(timeout, transport.abort)
            try:
                await asyncio.shield(waiter)
            finally:
                timer.cancel()

    def abort(self) -> None:
        """Drop the connection at once (no close frame)."""
        if self.transport is not None:
            self.transport.abort()
        self._state = _CLOSED
        self._end(Closed(ABNORMAL, "", "aborted"))


async def open_websocket(pool: HostPool, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                         subprotocols: Sequence[str] = (), *, add_host: bool = True,
                         head_timeout: float | None = None,
                         loop: asyncio.AbstractEventLoop | None = None,
                         max_message: int = MAX_MESSAGE) -> WebSocket | Refusal:
    """Open a WebSocket to ``pool``'s backend at ``target`` (its base path included),
    sending ``headers`` (those of :data:`HANDSHAKE_HEADERS` are dropped: the client makes
    its own) and offering ``subprotocols``; ``add_host``: put the backend's ``Host``
    first. Returns the open :class:`WebSocket`, or the backend's :class:`Refusal` when it
    answered anything but ``101``.

    Within the pool's connect timeout for the connection and its read timeout for the
    answer, and with ``head_timeout`` (a request's deadline, the time it has left) both
    together. Raises :class:`~.errors.ConnectError` (nothing sent),
    :class:`~.errors.TLSError` (a connect failure: the TLS handshake failed, the backend's
    verdict on it included), :class:`~.errors.ConnectTimeout`, :class:`~.errors.ReadTimeout` and
    :class:`~.errors.ProtocolError` (the answer broke, or its ``101`` failed the checks).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    backend = pool.backend
    limit = None if head_timeout is None else loop.time() + head_timeout
    key = base64.b64encode(os.urandom(16))
    socket = WebSocket(loop, key, subprotocols, max_message)
    wait, cut = pool.connect_timeout, False
    if limit is not None and limit - loop.time() < wait:
        wait, cut = max(0.001, limit - loop.time()), True
    # (the pool's TLS context and server name: the same as its HTTP connections')
    failed: TLSError | None = None
    try:
        await asyncio.wait_for(loop.create_connection(
            lambda: socket, backend.host, backend.port, ssl=pool.ssl,
            server_hostname=pool.server_hostname), wait)
    except asyncio.TimeoutError:
        error = ConnectTimeout(f"connecting to {backend.url} timed out")
        error.deadline = cut
        raise error from None
    except ssl.SSLError as exc:
        failed = TLSError(tls_failure_text(exc))
        failed.__cause__ = exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {backend.url}: {exc.strerror or exc}") from None
    if failed is not None:
        # Raised out of the handler (as the pool's connect does): an OSError as its context
        # would be read for an errno (an SSLError's errno 1 is no system error's).
        raise failed
    parts = [b"GET ", target, b" HTTP/1.1\r\n"]
    if add_host:
        parts += [b"Host: ", pool.host_header, b"\r\n"]
    for name, value in headers:
        if name.lower() not in HANDSHAKE_HEADERS:
            parts += [name, b": ", value, b"\r\n"]
    parts += [b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
              b"\r\nSec-WebSocket-Version: 13\r\n"]
    if subprotocols:
        parts += [b"Sec-WebSocket-Protocol: ", ", ".join(subprotocols).encode("latin-1"),
                  b"\r\n"]
    parts.append(b"\r\n")
    transport = socket.transport
    assert transport is not None        # (connection_made ran inside create_connection)
    socket._waiter = waiter = loop.create_future()
    transport.write(b"".join(parts))
    read, cut = pool.read_timeout, False
    if limit is not None and limit - loop.time() < read:
        read, cut = max(0.001, limit - loop.time()), True
    deadlines = pool.deadlines
    timer = deadlines.start(read, expire, waiter, loop)
    try:
        result = await waiter
    except BaseException:
        transport.abort()
        raise
    finally:
        deadlines.cancel(timer)
        socket._waiter = None
    if result is TIMED_OUT:
        transport.abort()
        timeout = ReadTimeout("no answer to the WebSocket handshake within the read timeout")
        timeout.deadline = cut
        raise timeout
    if isinstance(result, BaseException):
        raise result
    if isinstance(result, Refusal):
        return result
    return socket
