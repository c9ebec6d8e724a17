"""The gateway's admin listener (``LB_ADMIN_LISTEN``): the status app on a port of its own,
served by the standard library's HTTP server with wsgiref's handler in a fixed pool of
threads (:class:`AdminServer`), bounded as the proxied port is since it shares the proxy's
process."""

from __future__ import annotations

import contextlib
import io
import queue
import socket
import threading
import time
import wsgiref.simple_server
from typing import IO, TYPE_CHECKING, Any, cast

from .listen import url
from .logs import RefusalWarnings, logger

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from _typeshed.wsgi import WSGIApplication

__all__ = ["AdminServer", "ADMIN_WORKERS", "ADMIN_BACKLOG"]

#: The admin listener's threads: a scrape, a page and a readiness check at once, and more.
ADMIN_WORKERS = 8
#: Connections accepted by the admin listener and waiting for a thread; more are closed.
ADMIN_BACKLOG = 8
# Seconds an admin client has to take each write of its answer, once its head is in.
_ADMIN_WRITE_TIMEOUT = 10.0


class AdminServer:
    """A WSGI app (the status app) served on a listener of its own: the standard library's
    HTTP server with wsgiref's handler, accepting in a daemon thread (``lbmiddleware-admin``)
    and serving in a fixed pool of ``workers`` more (``lbmiddleware-admin-1``...).

    Its own listener, not a path of the proxied port: ``/status`` or ``/metrics`` stay the
    backends' paths, and the admin port can be kept off the network the clients reach
    (Envoy's admin interface, HAProxy's stats socket). Threads, not the event loop: the
    page is rendered by plain code, and a scrape never waits behind proxied requests (nor
    they behind it). ``sock`` is listening already; :meth:`stop` closes it.

    Bounded as the proxied port is, since it shares the proxy's process, its file
    descriptors and threads: at most ``backlog`` accepted connections wait for a worker,
    more are closed as soon as accepted (counted in a WARNING at most every 10 s); a
    client has ``header_timeout`` seconds (``LB_HEADER_TIMEOUT``) for its whole request
    head, a deadline that bytes arriving do not extend, and 10 s for each write of its
    answer. A client that times out or leaves is a DEBUG line and the app's own error an
    ERROR with its traceback, on the ``lbmiddleware.gateway`` logger: nothing is printed
    bare on stderr, as wsgiref's handler and socketserver do.
    """

    def __init__(self, app: WSGIApplication, sock: socket.socket, *,
                 header_timeout: float = 30.0, workers: int = ADMIN_WORKERS,
                 backlog: int = ADMIN_BACKLOG) -> None:
        if workers < 1:
            raise ValueError(f"AdminServer: workers has value {workers!r}: at least 1")
        if backlog < 0:
            raise ValueError(f"AdminServer: backlog has value {backlog!r}: at least 0")
        if not header_timeout > 0:
            raise ValueError(f"AdminServer: header_timeout has value {header_timeout!r}: "
                             "above 0 seconds")
        host, port = sock.getsockname()[:2]
        server = _AdminHTTPServer((host, port), header_timeout=header_timeout,
                                  workers=workers, backlog=backlog)
        server.socket.close()
        server.socket = sock
        server.server_name, server.server_port = host, port     # (no reverse DNS lookup)
        server.setup_environ()
        server.set_app(app)
        self.server = server
        self.address: tuple[str, int] = (host, port)
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="lbmiddleware-admin", daemon=True)
        self.workers = [threading.Thread(target=server.work, name=f"lbmiddleware-admin-{n}",
                                         daemon=True) for n in range(1, workers + 1)]

    @property
    def url(self) -> str:
        return url(*self.address)

    @property
    def connections(self) -> int:
        """The connections held now: being served, or accepted and waiting for a worker."""
        return self.server.held

    def set_app(self, app: WSGIApplication) -> None:
        """Serve ``app`` from the next request on (a reload's new pools); a request being
        answered finishes with the app it began with."""
        self.server.set_app(app)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        self.thread.start()

    def stop(self) -> None:
        """Stop accepting, close the listener, end the connections held (a request being
        answered is cut: the process is going away) and wait for the threads."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self.server.stop_workers(len(self.workers))
        deadline = time.monotonic() + 5.0
        for thread in (self.thread, *self.workers):
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))


class _AdminHTTPServer(wsgiref.simple_server.WSGIServer):
    """wsgiref's server with a fixed pool of threads and a bound on the connections held
    (see :class:`AdminServer`): the accepting thread hands each connection to the workers
    through a queue, or closes it when ``workers + backlog`` are held already."""

    def __init__(self, address: tuple[str, int], *, header_timeout: float, workers: int,
                 backlog: int) -> None:
        super().__init__(address, _AdminHandler, bind_and_activate=False)
        self.header_timeout = header_timeout
        self.capacity = workers + backlog
        self.held = 0                                   # under _lock
        self._lock = threading.Lock()
        self._active: set[socket.socket] = set()        # in a worker now; under _lock
        self._stopping = False
        self._waiting: queue.SimpleQueue[tuple[socket.socket, Any] | None] = (
            queue.SimpleQueue())
        self._refused = RefusalWarnings(
            f"admin listener busy ({workers} connections served, {backlog} waiting)",
            "closed at once")

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accepting thread: queue the connection for a worker, or close it."""
        with self._lock:
            taken = self.held < self.capacity and not self._stopping
            if taken:
                self.held += 1
        if taken:
            self._waiting.put((request, client_address))
        else:
            self.shutdown_request(request)
            self._refused()

    def work(self) -> None:
        """A worker thread: serve the queued connections one at a time until stopped."""
        while (item := self._waiting.get()) is not None:
            request, client_address = item
            with self._lock:
                stopping = self._stopping
                if not stopping:
                    self._active.add(request)
            try:
                if not stopping:
                    self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                with self._lock:
                    self._active.discard(request)
                    self.held -= 1
                self.shutdown_request(request)

    def stop_workers(self, count: int) -> None:
        """End the connections in the workers, drop those waiting, end ``count`` workers."""
        with self._lock:
            self._stopping = True
            for request in self._active:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
        for _ in range(count):
            self._waiting.put(None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Logged with its traceback, not printed on stderr (socketserver's way)."""
        logger.error("admin listener: error serving %s", client_address[0], exc_info=True)


class _HeadReader(io.RawIOBase):
    """The admin connection's bytes under wsgiref's buffered reader, each read given what
    is left of the request head's deadline: a socket timeout alone restarts with every
    byte, and a client trickling its head would hold a worker for ever. ``head_done()``
    lifts it once the head is in."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__()
        self._sock = sock
        self.seconds = seconds
        self.deadline: float | None = time.monotonic() + seconds
        self.ended = False          # the client closed its side before the head was in

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _HeadTimeout
            self._sock.settimeout(left)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            if self.deadline is not None:
                raise _HeadTimeout from None
            raise
        if count == 0 and self.deadline is not None:
            self.ended = True
        return count

    def head_done(self) -> None:
        self.deadline = None
        self._sock.settimeout(_ADMIN_WRITE_TIMEOUT)


class _HeadTimeout(TimeoutError):
    """The request head did not arrive within the header timeout."""


class _HeadCut(ConnectionError):
    """The client closed its side before the end of its request head."""


class _AdminHandler(wsgiref.simple_server.WSGIRequestHandler):
    """wsgiref's handler, one request per connection, with the head's deadline
    (:class:`_HeadReader`), and its errors logged on ``lbmiddleware.gateway``."""

    server: _AdminHTTPServer
    _head: _HeadReader

    def setup(self) -> None:
        super().setup()
        self.rfile.close()          # the plain socket file: replaced, the socket kept
        self._head = _HeadReader(self.connection, self.server.header_timeout)
        self.rfile = io.BufferedReader(self._head)

    def handle(self) -> None:
        """wsgiref's ``handle`` (a request line, the head, the app) with its own
        :class:`_AdminServerHandler`, and a timeout or a client gone logged at DEBUG."""
        client = self.client_address[0]
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():        # an error answered, or nothing sent
                return
            handler = _AdminServerHandler(self.rfile, cast("IO[bytes]", self.wfile),
                                          self.get_stderr(), self.get_environ(),
                                          multithread=True)
            handler.request_handler = self      # (wsgiref's: its close() logs through it)
            handler.run(cast("WSGIApplication", self.server.get_app()))
        except _HeadTimeout:
            logger.debug("admin listener: %s sent no request head in %g s: closed", client,
                         self._head.seconds)
        except _HeadCut:
            logger.debug("admin listener: %s left before the end of its request head",
                         client)
        except (TimeoutError, ConnectionError) as exc:
            logger.debug("admin listener: %s did not take its answer: %s", client, exc)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if self._head.ended and (parsed or self.raw_requestline):
            raise _HeadCut
        self._head.head_done()
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a scrape every few seconds would bury the gateway's own lines."""


class _AdminServerHandler(wsgiref.simple_server.ServerHandler):
    """wsgiref's WSGI handler, logging the app's error where it printed it on stderr."""

    request_handler: _AdminHandler

    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], (TimeoutError, ConnectionError)):
            raise exc_info[1]           # the client's doing: _AdminHandler logs it
        environ: dict[str, Any] = getattr(self, "environ", None) or {}
        logger.error("admin listener: the app failed on %s %s",
                     environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                     exc_info=exc_info)
