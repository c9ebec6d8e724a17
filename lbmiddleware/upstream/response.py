"""The streamed response the proxy front-ends read: the head at once, the body as it comes.

The connection feeds the body in; the front-end takes it out with :meth:`Response.take`
(what is there, never waiting) and :meth:`Response.read` (waits, under the read timeout).
Memory stays bounded whatever the body size: while more than :data:`HIGH_WATER` bytes
wait, the connection stops reading its socket, and the backend is slowed down by TCP
rather than buffered.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from .deadlines import TIMED_OUT, Deadlines, expire
from .errors import ProtocolError, ReadTimeout
from .parser import ResponseHead

__all__ = ["Response", "HIGH_WATER"]

HIGH_WATER = 256 * 1024      # response bytes buffered before the socket is paused


class _Source(Protocol):
    """What a response needs of the connection that feeds it (no import of the
    connection's module: it imports this one)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None: ...


class Response:
    """A response whose head has arrived; the body streams through :meth:`read`."""

    __slots__ = ("status", "reason", "headers", "_connection", "_chunks", "_buffered",
                 "complete", "_error", "_waiter", "_read_timeout", "_deadlines", "_loop",
                 "keep_alive", "bytes_sent")

    def __init__(self, head: ResponseHead, connection: _Source | None, read_timeout: float,
                 deadlines: Deadlines, loop: asyncio.AbstractEventLoop) -> None:
        # headers: [(name, value)] bytes, as received
        self.status, self.reason, self.headers, self.keep_alive = head
        self.complete = False                   # every body byte has been received
        self.bytes_sent = 0                     # the request body bytes written (the pool's)
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[object] | None = None
        self._read_timeout = read_timeout
        self._deadlines = deadlines
        self._loop = loop

    # -- fed by the connection ------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._connection is not None:
            self._connection.pause_reading()
        if self._waiter is not None:        # (nobody waits while the head is handed over)
            self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._connection = None
        if self._waiter is not None:
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
            timer = deadlines.start(self._read_timeout, expire, waiter, loop)
            try:
                await waiter
            finally:
                deadlines.cancel(timer)
                self._waiter = None
            if waiter.result() is TIMED_OUT and not self._chunks and not self.complete:
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
