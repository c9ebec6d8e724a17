"""One active health check: ``GET <path>`` to one backend, pass or fail with a reason.

The I/O is the upstream client's own :class:`~lbmiddleware.upstream.connection.Connection`
(its sans-I/O parser, its deadlines), so a probe reads a response exactly as a proxied
request does; only the connect is done here, because a backend found through DNS is reached
at an address while TLS must name the server (``server_hostname`` =
``backend.tls_server_name``, which :class:`~lbmiddleware.upstream.HostPool` does not take).

Each backend's connection is kept between its probes (HTTP/1.1 keep-alive, as Envoy's
``reuse_connection`` does by default): a probe on a kept connection costs a write and a read
where a fresh one also costs a connect, the backend's accept, two closes (and a TLS
handshake); at 1,000 backends every 2 s the prober's CPU is halved
(``benchmarks/bench_probes.py``). The price: while its probes pass, a backend's listener is
not tested again (HAProxy and nginx connect per check), so a backend that stops accepting
but still answers on its old connections passes its probes until it closes them, as HTTP
servers do when they shut down. Its clients' failures eject it, and from then on its probes
are on new connections (the prober's rule, :mod:`.prober`): only a probe that shows the
backend accepts new connections can end an ejection or bring a down backend up. Probes of
one backend never overlap (the prober's rule), so one
connection per backend is all there is: :attr:`HealthCheck.kept` maps a backend's URL to it.
It is closed (and the next probe connects afresh, testing the listener again):

* after a failed probe (a status that does not pass, a timeout, a broken answer): a backend
  on its way down or back up is checked on a new connection each time;
* when the answer says ``Connection: close`` (or is HTTP/1.0 without keep-alive, or its body
  runs until the close);
* when its body (``Content-Length`` or chunked: read through) is longer than
  :data:`MAX_DRAIN` bytes or does not end within the timeout;
* when the backend closes it while idle (seen by the loop, then dropped at the next probe);
* by :meth:`HealthCheck.drop` (the prober calls it when the backend leaves the pool, when
  the pool ejects it, and before each probe of a backend that is ejected or down) and
  :meth:`HealthCheck.close` (when the prober stops).

A kept connection the backend closed without the loop having seen it yet (its idle timeout
meeting the probe) fails before any byte of the answer: the probe is sent once more at once
on a fresh connection, within the same timeout, so a backend never fails a check for closing
an idle connection. ``Host`` is ``backend.authority``. The whole probe, connect and response
head, fits in ``timeout`` (HAProxy ``timeout check``, Envoy ``timeout``).

Pass = a final status in ``statuses`` (inclusive ranges, 200-399 by default: HAProxy,
nginx, Traefik); anything else fails with a reason the logs and ``stats()`` show:
``"status 503"``, ``"timeout after 2s"``, ``"connection refused"``, ``"TLS: certificate
verify failed: unable to get local issuer certificate"`` (the upstream client's words:
:func:`~lbmiddleware.upstream.tls.tls_failure_text`; a TLS 1.3 backend refusing the client
certificate says so in place of the first answer), ``"the backend closed the connection"``.

The body is not part of the verdict; it is read to its end (up to :data:`MAX_DRAIN` bytes,
while the timeout lasts) so that the connection can carry the next probe. A connection that
is not kept is closed with a FIN when its answer ended, and cut (a reset) otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from ..core.backend import Backend
from ..core.casts import format_duration
from ..upstream.connection import Connection
from ..upstream.deadlines import Deadlines
from ..upstream.errors import ReadTimeout, StaleConnection, UpstreamError
from ..upstream.response import Response
from ..upstream.tls import system_ssl_context, tls_failure_text

__all__ = ["HealthCheck", "MAX_DRAIN", "USER_AGENT", "within"]

T = TypeVar("T")

MAX_DRAIN = 64 * 1024        # body bytes read after the head; a longer body: connection cut
USER_AGENT = b"lbmiddleware-health-check"

# errno -> reason: the failures an operator meets, in the words of the logs.
_CONNECT_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
}


class _Owner:
    """What a :class:`Connection` needs of its pool: the timers, and where a connection goes
    once its answer ended and it may carry another (``reusable``, until the probe that
    used it decides whether to keep it)."""

    __slots__ = ("deadlines", "reusable")

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self.reusable: set[Connection] = set()

    def _release(self, connection: Connection) -> None:
        self.reusable.add(connection)


class _Kept:
    """A backend's kept connection and what it was opened for (a new server name needs a
    new connection: Host is per request, but SNI and the certificate are per connection)."""

    __slots__ = ("connection", "server_name")

    def __init__(self, connection: Connection, server_name: str | None) -> None:
        self.connection = connection
        self.server_name = server_name


class HealthCheck:
    """``await check(backend)`` -> ``(ok, reason)``: one probe, never raising but for a
    cancellation (which aborts the connection).

    ``path``: absolute (``/healthz``: sent as it is, the backend's base path not prefixed) or
    relative (``healthz``: appended to the base path, ``/base/healthz``); characters outside
    ASCII are percent-encoded (UTF-8). ``statuses``:
    inclusive ``(low, high)`` ranges that pass. ``ssl``: the context for ``https`` backends
    (the prober gives the pool's; default: the system's trust store), the certificate
    verified against ``backend.tls_server_name``.

    A connection per backend is kept between probes (:attr:`kept`, by URL); one check must
    not probe one backend twice at once (the prober never does). :meth:`drop` closes a
    backend's, :meth:`close` all of them. ``opened`` counts the connections opened.
    """

    def __init__(self, path: str, statuses: Sequence[tuple[int, int]], timeout: float, *,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        # Percent-encoded once: a path the settings accept may hold non-ASCII letters.
        self.path = urllib.parse.quote(path, safe="!$%&'()*+,/:;=?@[]~")
        self.statuses = tuple(statuses)
        self.timeout = timeout
        self._ssl = ssl
        self._owner = _Owner()
        self._timeout_reason = f"timeout after {format_duration(timeout)}"
        self.kept: dict[str, _Kept] = {}
        self.opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

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
            b"User-Agent: " + USER_AGENT + b"\r\nAccept: */*\r\n\r\n")

    def passes(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.statuses)

    def ssl_context(self) -> ssl_module.SSLContext:
        """The TLS context for ``https`` backends: the one given, else the system's (shared,
        made on first use: loading the trust store takes milliseconds, once)."""
        if self._ssl is None:
            self._ssl = system_ssl_context()
        return self._ssl

    async def __call__(self, backend: Backend) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        used: list[Connection] = []         # the kept one and/or a fresh one
        keep: Connection | None = None
        try:
            try:
                connection, response = await self._ask(backend, deadline, loop, used)
            except (asyncio.TimeoutError, ReadTimeout):
                return False, self._timeout_reason
            except ssl_module.SSLError as exc:
                return False, tls_failure_text(exc)
            except socket.gaierror as exc:
                return False, f"cannot resolve {backend.host}: {exc.strerror or exc}"
            except OSError as exc:
                return False, _connect_reason(exc)
            except UpstreamError as exc:
                return False, str(exc)
            status = response.status
            ok = self.passes(status)
            if await self._finish(response, deadline, loop) and ok \
                    and connection in self._owner.reusable:
                keep = connection
            return ok, f"status {status}"
        finally:
            reusable = self._owner.reusable
            for connection in used:
                if connection in reusable:
                    reusable.discard(connection)
                    if connection is not keep:
                        connection.close()      # its answer ended: a clean close
                elif not connection.closed:
                    connection.abort()          # cut in the middle (a timeout, a cancel)
            if keep is not None:
                self.kept[backend.url] = _Kept(keep, backend.server_name)

    async def _ask(self, backend: Backend, deadline: float, loop: asyncio.AbstractEventLoop,
                   used: list[Connection]) -> tuple[Connection, Response]:
        """Send the probe and wait for the answer's head: on the kept connection if there is
        one still open, once more on a fresh one if that one turns out closed by the backend
        before any byte of the answer. Every connection used is added to ``used``."""
        head = self.request_head(backend)
        connection = self._take(backend, loop)
        if connection is not None:
            used.append(connection)
            try:
                return connection, await connection.exchange(
                    head, None, 0, False, max(deadline - loop.time(), 0.001))
            except StaleConnection:
                pass                # closed by the backend while idle: not the backend's fault
        connection = Connection(self._owner, loop)
        used.append(connection)
        await self._connect(connection, backend, deadline, loop)
        return connection, await connection.exchange(
            head, None, 0, False, max(deadline - loop.time(), 0.001))

    def _take(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> Connection | None:
        """The backend's kept connection, taken out of :attr:`kept`, if it is still open,
        on this loop and for the same server name; None otherwise (a stale one is closed)."""
        if loop is not self._loop:
            if self._pid != os.getpid():
                # A forked child: closing would unregister the parent's sockets from the
                # epoll set the two share. The parent's connections are let go of.
                self.kept, self._pid = {}, os.getpid()
            self.close()                # the old loop's connections (a new asyncio.run)
            self._loop = loop
        kept = self.kept.pop(backend.url, None)
        if kept is None:
            return None
        connection = kept.connection
        if connection.is_open() and kept.server_name == backend.server_name:
            return connection
        if not connection.closed:
            connection.close()
        return None

    def drop(self, url: str) -> None:
        """Close the connection kept for the backend at ``url``, if any (it left the pool,
        or its next probe must connect afresh). A probe in progress keeps its connection
        until it ends (cancel it to close it). On the check's loop only."""
        kept = self.kept.pop(url, None)
        if kept is not None:
            _close(kept.connection)

    def close(self) -> None:
        """Close every kept connection (the prober stops). The check stays usable."""
        kept, self.kept = self.kept, {}
        for entry in kept.values():
            _close(entry.connection)

    async def _connect(self, connection: Connection, backend: Backend, deadline: float,
                       loop: asyncio.AbstractEventLoop) -> None:
        if backend.scheme == "https":
            ssl: ssl_module.SSLContext | None = self.ssl_context()
            server_hostname: str | None = backend.tls_server_name
        else:
            ssl = server_hostname = None
        self.opened += 1
        await within(
            loop.create_connection(lambda: connection, backend.host, backend.port,
                                   ssl=ssl, server_hostname=server_hostname),
            max(deadline - loop.time(), 0.001))

    @staticmethod
    async def _finish(response: Response, deadline: float,
                      loop: asyncio.AbstractEventLoop) -> bool:
        """Read the body to its end while the time and :data:`MAX_DRAIN` last; True if it
        ended within both (the connection may carry the next probe). An unfinished one is
        let go of (the connection cut)."""
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
        return response.complete and received <= MAX_DRAIN


def _close(connection: Connection) -> None:
    """Close an idle kept connection (a FIN); on a closed loop there is nothing to do."""
    if not connection.closed:
        try:
            connection.close()
        except RuntimeError:        # its event loop is closed: the socket goes with it
            pass


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
