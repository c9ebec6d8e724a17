"""One active health check: ``GET <path>`` to one backend, pass or fail with a reason.

The I/O is the upstream client's own :class:`~lbmiddleware.upstream.connection.Connection`
(its sans-I/O parser, its deadlines), so a probe reads a response exactly as a proxied
request does; only the connect is done here, because a backend found through DNS is reached
at an address while TLS must name the server (``server_hostname`` =
``backend.tls_server_name``, which :class:`~lbmiddleware.upstream.HostPool` does not take).

Each probe opens a fresh connection and sends ``Connection: close``: a kept connection would
test the pool's idle socket rather than the backend's accept queue, and a dead listener must
fail its check (HAProxy and nginx connect per check too). ``Host`` is
``backend.authority``. The whole probe, connect and response head, fits in ``timeout``
(HAProxy ``timeout check``, Envoy ``timeout``).

Pass = a final status in ``statuses`` (inclusive ranges, 200-399 by default: HAProxy,
nginx, Traefik); anything else fails with a reason the logs and ``stats()`` show:
``"status 503"``, ``"timeout after 2s"``, ``"connection refused"``, ``"TLS: certificate
verify failed ..."``, ``"the backend closed the connection"``.

The body is not part of the verdict. A body that arrived with the head (the usual small
health answer) ends the connection cleanly; otherwise up to :data:`MAX_DRAIN` bytes are read
while the timeout lasts, so a backend that wrote a little more is closed with a FIN rather
than a reset, and anything larger or slower is cut (the connection is aborted).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from ..core.backend import Backend
from ..upstream.connection import Connection
from ..upstream.deadlines import Deadlines
from ..upstream.errors import ReadTimeout, UpstreamError
from ..upstream.response import Response

__all__ = ["HealthCheck", "MAX_DRAIN", "USER_AGENT", "format_seconds", "within"]

T = TypeVar("T")

MAX_DRAIN = 64 * 1024        # body bytes read after the head before the connection is cut
USER_AGENT = b"lbmiddleware-health-check"

# errno -> reason: the failures an operator meets, in the words of the logs.
_CONNECT_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
}


def format_seconds(seconds: float) -> str:
    """``2.0`` -> ``"2s"``, ``0.25`` -> ``"250ms"``: durations as the settings spell them."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


class _Owner:
    """What a :class:`Connection` needs of its pool: the timers, and where a reusable
    connection goes back (nowhere: a probe's connection is closed after its one answer)."""

    __slots__ = ("deadlines",)

    def __init__(self) -> None:
        self.deadlines = Deadlines()

    def _release(self, connection: Connection) -> None:
        connection.close()


class HealthCheck:
    """``await check(backend)`` -> ``(ok, reason)``: one probe, never raising but for a
    cancellation (which aborts the connection).

    ``path``: absolute (``/healthz``: sent as it is, the backend's base path not prefixed) or
    relative (``healthz``: appended to the base path, ``/base/healthz``); characters outside
    ASCII are percent-encoded (UTF-8). ``statuses``:
    inclusive ``(low, high)`` ranges that pass. ``ssl``: the context for ``https`` backends
    (default: the system's trust store, verifying the certificate against
    ``backend.tls_server_name``).
    """

    def __init__(self, path: str, statuses: Sequence[tuple[int, int]], timeout: float, *,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        # Percent-encoded once: a path the settings accept may hold non-ASCII letters.
        self.path = urllib.parse.quote(path, safe="!$%&'()*+,/:;=?@[]~")
        self.statuses = tuple(statuses)
        self.timeout = timeout
        self._ssl = ssl
        self._owner = _Owner()
        self._timeout_reason = f"timeout after {format_seconds(timeout)}"

    def target(self, backend: Backend) -> str:
        """The request target for ``backend``: the path, or the base path and the path."""
        path = self.path
        if path.startswith("/"):
            return path
        return f"{backend.path}/{path}"

    def request_head(self, backend: Backend) -> bytes:
        """The probe's request head (ASCII: the settings and the backend are validated)."""
        return (f"GET {self.target(backend)} HTTP/1.1\r\n"
                f"Host: {backend.authority}\r\n").encode("ascii") + (
            b"User-Agent: " + USER_AGENT + b"\r\nAccept: */*\r\nConnection: close\r\n\r\n")

    def passes(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.statuses)

    def ssl_context(self) -> ssl_module.SSLContext:
        """The TLS context for ``https`` backends, made on first use (a default context
        loads the trust store: milliseconds, once)."""
        if self._ssl is None:
            self._ssl = ssl_module.create_default_context()
        return self._ssl

    async def __call__(self, backend: Backend) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        connection = Connection(self._owner, loop)
        try:
            try:
                await self._connect(connection, backend, loop)
                response = await connection.exchange(
                    self.request_head(backend), None, 0, False,
                    max(deadline - loop.time(), 0.001))
            except (asyncio.TimeoutError, ReadTimeout):
                return False, self._timeout_reason
            except ssl_module.SSLCertVerificationError as exc:
                return False, f"TLS: {exc.verify_message or exc.reason}"
            except ssl_module.SSLError as exc:
                return False, f"TLS: {exc.reason or exc}"
            except socket.gaierror as exc:
                return False, f"cannot resolve {backend.host}: {exc.strerror or exc}"
            except OSError as exc:
                return False, _connect_reason(exc)
            except UpstreamError as exc:
                return False, str(exc)
            status = response.status
            await self._finish(response, deadline, loop)
            return self.passes(status), f"status {status}"
        finally:
            if not connection.closed:
                connection.abort()

    async def _connect(self, connection: Connection, backend: Backend,
                       loop: asyncio.AbstractEventLoop) -> None:
        if backend.scheme == "https":
            ssl: ssl_module.SSLContext | None = self.ssl_context()
            server_hostname: str | None = backend.tls_server_name
        else:
            ssl = server_hostname = None
        await within(
            loop.create_connection(lambda: connection, backend.host, backend.port,
                                   ssl=ssl, server_hostname=server_hostname),
            self.timeout)

    @staticmethod
    async def _finish(response: Response, deadline: float,
                      loop: asyncio.AbstractEventLoop) -> None:
        """Read what is left of a small body while the time lasts, then let go of it."""
        received = len(response.take())
        try:
            while not response.complete and received <= MAX_DRAIN:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                data = await within(response.read(), remaining)
                if not data:
                    break
                received += len(data)
        except (asyncio.TimeoutError, UpstreamError):
            pass
        finally:
            response.close()        # an unfinished body: the connection is aborted


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``asyncio.wait_for`` without its flaw before Python 3.12: there, a cancellation that
    arrives in the loop iteration where the awaited call completes is swallowed (the result
    is returned and the task runs on as if never cancelled: a prober being stopped kept
    probing). Here a cancellation always propagates, and the awaited call is cancelled and
    waited for, on a timeout too. Raises :class:`asyncio.TimeoutError` after ``seconds``."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except BaseException:
        task.add_done_callback(_retrieve)
        task.cancel()
        raise
    if not done:
        task.add_done_callback(_retrieve)
        task.cancel()
        await asyncio.wait((task,))         # its own cleanup (a half-open socket) first
        raise asyncio.TimeoutError
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take the outcome of a call given up on (no "exception never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


def _connect_reason(exc: OSError) -> str:
    reason = _CONNECT_REASONS.get(exc.errno or 0)
    if reason is not None:
        return reason
    if isinstance(exc, ConnectionError):
        return f"connection failed: {exc.strerror or exc}"
    return f"cannot connect: {exc.strerror or exc}"
