"""A lean asyncio HTTP/1.1 client for the ASGI proxy: one keep-alive pool per backend.

Chosen by measurement over httpx and aiohttp (numbers in the commit that added it and in
``benchmarks/bench_proxy.py``): a proxy needs only a small part of HTTP/1.1 (send a head
and a body, parse a response head, stream a ``Content-Length``, chunked or read-to-close
body), and doing just that on an :class:`asyncio.Protocol` costs a fraction of a general
client's per-request work. Standard library only.

* :class:`Upstream` holds a :class:`HostPool` per backend; a pool keeps idle connections
  (LIFO) for reuse and drops those the backend closed or that idled too long.
  :meth:`Upstream.forget` lets go of the pools of backends that left the balancer (from any
  thread): their idle connections close on their own loop, the others as their responses
  end, and a backend that comes back gets a fresh pool.
* :meth:`HostPool.request` sends one request over a :class:`~.connection.Connection`
  and returns a :class:`~.response.Response` once the head has arrived; its body is read
  with :meth:`~.response.Response.read` under flow control (the socket stops being read
  while more than :data:`~.response.HIGH_WATER` bytes wait), so memory stays bounded whatever
  the body size. Request bodies are ``bytes`` or an async iterator, sent
  with ``Content-Length`` when the length is known, else chunked.
* Errors are :class:`~.errors.UpstreamError` subclasses; ``exc.sent`` says whether any of the
  request may have reached the backend (``False``: a connect failure, safe to retry for
  any method), ``exc.timeout`` whether it was a timeout.
* https backends are reached with the context given as ``ssl=`` (the pool's:
  :func:`~.tls.backend_ssl_context` of its settings), else the system's store
  (:func:`~.tls.system_ssl_context`); one context for every connection. A failed handshake
  is a :class:`~.errors.TLSError`: a connect failure whose text names the problem.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from ..core.backend import Backend
from .connection import Connection
from .deadlines import Deadlines
from .errors import CONNECT_FAILURES, StaleConnection, UpstreamError, connect_error
from .head import request_head
from .response import Response
from .tls import system_ssl_context

__all__ = ["Upstream", "HostPool", "pool_for", "forget_pools", "DEFAULT_MAX_IDLE",
           "DEFAULT_IDLE_TIMEOUT"]

DEFAULT_MAX_IDLE = 128       # idle connections kept per backend
DEFAULT_IDLE_TIMEOUT = 15.0  # seconds an idle connection is kept
_SHORTEST = 0.001            # seconds: a head_timeout's wait is never cut below this


class HostPool:
    """Keep-alive connections to one backend, and the requests sent over them."""

    def __init__(self, backend: Backend, *, connect_timeout: float, read_timeout: float,
                 max_idle: int = DEFAULT_MAX_IDLE, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 ssl: ssl_module.SSLContext | None = None,
                 deadlines: Deadlines | None = None) -> None:
        self.backend = backend
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        # A backend reached by address answers to its server name (DNS sources): Host and
        # TLS (SNI, certificate verification) use the name, the connection the address.
        self.host_header = backend.authority.encode("ascii")
        self._server_hostname = backend.tls_server_name if backend.scheme == "https" else None
        self.base_path = backend.path.encode("ascii")
        self._ssl = (ssl or system_ssl_context()) if backend.scheme == "https" else None
        self._idle: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0         # connections opened, ever (for tests and stats)

    @property
    def ssl(self) -> ssl_module.SSLContext | None:
        """The TLS context of this pool's connections (None for an http backend): every
        connection's, the HTTP ones' and the WebSocket client's alike."""
        return self._ssl

    @property
    def server_hostname(self) -> str | None:
        """The name SNI and the certificate check use (the backend's server name, else its
        host; None for an http backend)."""
        return self._server_hostname

    async def request(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] | None = None,
                      length: int | None = 0, *, replayable: bool = True,
                      add_host: bool = True, read_timeout: float | None = None,
                      head_timeout: float | None = None,
                      loop: asyncio.AbstractEventLoop | None = None) -> Response:
        """Send ``method target`` with ``headers`` and ``body``; ``add_host``: put the
        backend's ``Host`` first (pass ``False`` when ``headers`` have one). The head is
        :func:`~.head.request_head`'s (the fast server's upstream client's too).

        ``length``: the body's size (``0``: no body; ``None``: unknown, sent chunked); a
        ``bytes`` body gives its own length. Returns once the response head arrived. A
        reused connection that the backend had closed (no response byte) is replaced by a
        fresh one when the request is ``replayable`` (the caller's retry rule says so) and
        its body is ``bytes``. ``loop``: the running loop, if the caller has it at hand.

        ``read_timeout`` replaces the pool's for this call. ``head_timeout`` (seconds; a
        request's deadline, the time it has left) bounds the whole call to the response
        head: the connect, the upload and the wait together, each within its own timeout
        too. When it is what ran out, the :class:`~.errors.ConnectTimeout` or
        :class:`~.errors.ReadTimeout` raised has ``deadline`` set. The response's
        ``bytes_sent`` (an error's too) is the request body bytes written.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        limit = None if head_timeout is None else loop.time() + head_timeout
        if isinstance(body, (bytes, bytearray, memoryview)):
            length = len(body)
        head = request_head(method, target, headers, self.host_header if add_host else None,
                            length)
        head_request = method == b"HEAD"
        while True:
            connection = self._idle_connection(loop) or await self._connect(loop, limit)
            try:
                if limit is None:
                    response = await connection.exchange(head, body, length, head_request,
                                                         read_timeout)
                else:
                    response = await connection.exchange(
                        head, body, length, head_request, read_timeout,
                        max(_SHORTEST, limit - loop.time()))
                response.bytes_sent = connection.body_sent
                return response
            except StaleConnection:
                if not replayable or not (body is None or isinstance(body, bytes)):
                    raise
                continue        # the backend had closed it: once more on a fresh connection
            except UpstreamError as exc:
                connection.abort()
                exc.bytes_sent = connection.body_sent
                raise
            except BaseException:
                connection.abort()
                raise

    def _idle_connection(self, loop: asyncio.AbstractEventLoop) -> Connection | None:
        """The most recently used idle connection still open, if any."""
        if loop is not self._loop:
            self._drop_idle()
            self._loop = loop
        idle = self._idle
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if (connection.is_open()
                        and now - connection.idle_since < self.idle_timeout):
                    return connection
                connection.abort()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, limit: float | None = None
                       ) -> Connection:
        """A new connection, within the connect timeout and before ``limit`` (loop time)."""
        backend = self.backend
        connection = Connection(self, loop)
        wait, cut = self.connect_timeout, False
        if limit is not None:
            left = limit - loop.time()
            if left < wait:
                wait, cut = max(_SHORTEST, left), True
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: connection, backend.host, backend.port,
                                       ssl=self._ssl, server_hostname=self._server_hostname),
                wait)
        except CONNECT_FAILURES as exc:
            failed = connect_error(exc, backend, cut=cut)
        else:
            self.opened += 1
            return connection
        # Raised out of the handler: an SSLError as its context would be read for an errno
        # (failure_text's, in errors.py: an SSLError's errno 1 is no system error's).
        raise failed

    def _release(self, connection: Connection) -> None:
        if len(self._idle) < self.max_idle and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                connection.abort()
            except RuntimeError:        # its event loop is closed: nothing left to close
                pass

    def close(self) -> None:
        """Close the idle connections (those in use close when their response ends)."""
        self._drop_idle()

    def leave(self) -> None:
        """The backend left: keep no connection from now on (each closes when its response
        ends: a request in flight is not cut) and close the idle ones, on the pool's own
        loop. Safe from any thread."""
        self.max_idle = 0               # _release closes: nothing added to the hot path
        loop = self._loop
        if loop is None:
            return                      # never used: nothing open
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._drop_idle()
            return
        try:
            loop.call_soon_threadsafe(self._drop_idle)
        except RuntimeError:            # its loop is closed: no callback will run
            self._drop_idle()


class _Pool(Protocol):
    """What :func:`pool_for` needs of a pool (a :class:`HostPool`, the fast server's
    ``BackendPool``)."""

    @property
    def backend(self) -> Backend: ...

    def leave(self) -> None: ...


P = TypeVar("P", bound=_Pool)


def pool_for(pools: dict[str, P], backend: Backend, make: Callable[[Backend], P]) -> P:
    """The pool of ``pools`` (keyed by backend URL) for ``backend``, made by ``make`` on first
    use. A backend whose server name changed gets a new pool: the old one leaves (its
    connections, TLS ones included, answer to the old name)."""
    pool = pools.get(backend.url)
    if pool is None or pool.backend.server_name != backend.server_name:
        if pool is not None:
            pool.leave()
        pool = pools[backend.url] = make(backend)
    return pool


def forget_pools(pools: dict[str, P], backends: Iterable[Backend]) -> None:
    """``backends`` left the balancer: their pools leave ``pools`` (each closes its idle
    connections, the busy ones after their response), and one that comes back gets a new
    pool. Safe from any thread (one ``dict.pop`` per backend; ``leave`` is thread-safe)."""
    for backend in backends:
        pool = pools.pop(backend.url, None)
        if pool is not None:
            pool.leave()


class Upstream:
    """A :class:`HostPool` per backend, made on first use."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 max_idle: int = DEFAULT_MAX_IDLE, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.ssl = ssl
        self.deadlines = Deadlines()
        self._pools: dict[str, HostPool] = {}

    def pool(self, backend: Backend) -> HostPool:
        """The pool for ``backend`` (same URL and server name, same pool: :func:`pool_for`)."""
        return pool_for(self._pools, backend, self._make)

    def _make(self, backend: Backend) -> HostPool:
        return HostPool(
            backend, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            max_idle=self.max_idle, idle_timeout=self.idle_timeout, ssl=self.ssl,
            deadlines=self.deadlines)

    def pools(self) -> tuple[HostPool, ...]:
        """The pools held now: one per backend used and not forgotten since."""
        return tuple(self._pools.values())

    def forget(self, backends: Iterable[Backend]) -> None:
        """``backends`` left the balancer: their pools leave (:meth:`HostPool.leave`), and
        one that comes back gets a new pool. Safe from any thread (a balancer's listener
        runs on the thread that changed the members)."""
        forget_pools(self._pools, backends)

    def close(self) -> None:
        """Close every idle connection."""
        for pool in list(self._pools.values()):
            pool.close()
