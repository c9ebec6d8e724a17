"""The gateway: the ASGI proxy alone, under an HTTP server, configured from ``LB_*``.

``python -m lbmiddleware serve`` calls :func:`serve`. The server is chosen by
``LB_SERVER`` [auto]: granian when it is installed, else uvicorn with httptools (and
uvloop when installed). Both run one worker with no access log; measured with
``benchmarks/bench_proxy.py`` on the same middleware, granian serves about 25% more
requests per second (its HTTP layer is native code), so ``auto`` prefers it.

The gateway prints the address it listens on. Under uvicorn it binds the socket itself,
so ``LB_LISTEN=127.0.0.1:0`` gets a port from the OS with no race; granian's worker binds
its own socket, so for port 0 a free port is looked up first and handed to it, and the
address is printed once it accepts connections (probed after granian forked its worker:
no thread of ours is alive across a fork).

Both servers get the same bounds: ``LB_HEADER_TIMEOUT`` for a request head,
``LB_MAX_CONNECTIONS`` client connections (granian's ``backpressure`` leaves more in the
listen backlog; under uvicorn they are answered 503), and ``LB_SHUTDOWN_TIMEOUT`` for
requests in flight after SIGTERM (granian's ``workers_kill_timeout``). uvicorn has no head
timeout and forwards chunked trailers as headers: :func:`_uvicorn_protocol` adds the one
and drops the other.

Logging is configured before the settings are read, in the main process and (granian) in
the worker: one stderr handler, ``TIME LEVEL LOGGER: MESSAGE``, from ``LB_LOG_LEVEL``
[info], the servers' own loggers at warning at least (:func:`logging_config`).

``LB_ADMIN_LISTEN`` adds the admin listener (:class:`AdminServer`: the status app on a port
of its own) to the process that owns the pool. Its address is bound before granian forks and
the worker serves on that very socket, so port 0 is resolved once, printed in the banner, and
never raced for; the main process keeps its copy open (it never accepts on it), so the worker
granian starts again on SIGHUP serves it too, and connections arriving in between wait in
its backlog. It shares the proxy's process, so it is bounded as the proxied port is: a fixed
pool of threads, connections beyond a small backlog closed at once, ``LB_HEADER_TIMEOUT``
for a request head.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import io
import logging
import logging.config
import queue
import signal
import socket
import sys
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

from .asgi import LoadBalancerMiddleware
from .core.balancer import Balancer
from .core.settings import FrontEndSettings
from .errors import ConfigError
from .fleet.pool import require_library
from .gateway_settings import LOG_LEVELS, GatewaySettings, load_settings
from .proxy import ErrorResponse, error_response
from .proxy.access import access_line
from .proxy.access import logger as access_logger
from .proxy.settings import ProxySettings

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from _typeshed.wsgi import WSGIApplication

__all__ = ["load_settings", "make_app", "app_from_env", "choose_server", "check_libraries",
           "bind", "bind_setting", "serve", "logging_config", "configure_logging", "LOG_FORMAT",
           "GatewayApp", "AdminServer", "CannotListen"]

# The modules each server needs: under uvicorn the gateway's protocol (head timeout,
# connection limit, no trailers as headers) extends uvicorn's httptools protocol.
SERVERS = {"granian": ("granian",), "uvicorn": ("uvicorn", "httptools")}

logger = logging.getLogger(__name__)

#: Every line the gateway logs: time, level, logger, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The servers' own loggers, kept at warning or above: their INFO lines (start-up banners,
# one per connection or request) would bury the pool's. granian's Rust side logs as
# "_granian".
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi",
                   "granian", "_granian", "granian.access")


def logging_config(level: str, *, access_log: bool = False) -> dict[str, Any]:
    """The gateway's logging (``level``: ``LB_LOG_LEVEL``) as a ``logging.config.dictConfig``:
    one handler on stderr with :data:`LOG_FORMAT` for every logger, the servers' own at
    ``warning`` at least. With ``access_log`` (``LB_ACCESS_LOG``) the access logger is at
    INFO whatever ``level``: the access log is a setting of its own, asked for, and
    ``warning`` (to keep the failed attempts out) must not silently turn it off. Applied in
    the main process (:func:`configure_logging`) and, handed to granian, in its worker, which
    configures logging again when it starts."""
    quiet = _server_log_level(level).upper()
    loggers: dict[str, dict[str, str]] = {name: {"level": quiet} for name in _SERVER_LOGGERS}
    if access_log:
        loggers[access_logger.name] = {"level": "INFO"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "gateway",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": loggers,
    }


def _server_log_level(level: str) -> str:
    """The level of the servers' own loggers for ``LB_LOG_LEVEL`` ``level``: warning at
    least."""
    return max(level, "warning", key=LOG_LEVELS.index)


def _logging_config(settings: FrontEndSettings) -> dict[str, Any]:
    """:func:`logging_config` for the gateway's ``settings``."""
    return logging_config(settings[GatewaySettings].log_level,
                          access_log=settings[ProxySettings].access_log)


def configure_logging(level: str) -> None:
    """Configure this process's logging for the gateway (:func:`logging_config`); ``serve``
    runs it before the settings are read, so that their warnings have a handler."""
    logging.config.dictConfig(logging_config(level))


def make_app(settings: FrontEndSettings, *,
             admin_socket: socket.socket | None = None) -> GatewayApp:
    """The gateway's ASGI application: the proxy with no app behind it, and the admin
    listener beside it when ``LB_ADMIN_LISTEN`` is set (``settings``: from
    :func:`load_settings`; ``admin_socket``: the admin address bound already, as
    :func:`serve` does before granian forks)."""
    return GatewayApp(settings, admin_socket=admin_socket)


class GatewayApp(LoadBalancerMiddleware):
    """The proxy (with no app behind it), and with ``LB_ADMIN_LISTEN`` the status app on a
    listener of its own (:class:`AdminServer`) in the process that owns the pool: started
    at the lifespan's startup (before the sources' first answers are awaited, so ``/ready``
    says 503 meanwhile), stopped at its shutdown.

    ``admin_app`` makes the admin listener's WSGI app for the pool
    (:func:`lbmiddleware.observe.status_wsgi_app` by default).
    """

    def __init__(self, settings: FrontEndSettings, *, admin_socket: socket.socket | None = None,
                 admin_app: Callable[[Balancer], WSGIApplication] | None = None) -> None:
        super().__init__(None, settings=settings)
        self._admin_address = settings[GatewaySettings].admin_address
        self._admin_socket = admin_socket
        self._admin_app = admin_app if admin_app is not None else _status_app
        self._header_timeout = settings[GatewaySettings].header_timeout
        self.admin: AdminServer | None = None

    async def ready(self) -> bool:
        self._start_admin()
        return await super().ready()

    async def aclose(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            admin.stop()
        await super().aclose()

    def _start_admin(self) -> None:
        if self.admin is not None:
            return
        sock, self._admin_socket = self._admin_socket, None
        if sock is None and self._admin_address is not None:
            sock = bind_setting(self._admin_address, "LB_ADMIN_LISTEN")
        if sock is not None:
            self.admin = AdminServer(self._admin_app(self.balancer), sock,
                                     header_timeout=self._header_timeout)
            self.admin.start()


def _status_app(balancer: Balancer) -> WSGIApplication:
    from .observe import status_wsgi_app
    return status_wsgi_app(balancer)


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
        return _url(*self.address)

    @property
    def connections(self) -> int:
        """The connections held now: being served, or accepted and waiting for a worker."""
        return self.server.held

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


def app_from_env() -> GatewayApp:
    """An application factory for any ASGI server: ``uvicorn --factory
    lbmiddleware.gateway:app_from_env`` (settings from ``LB_*``; ``LB_LISTEN`` unused)."""
    return make_app(load_settings())


def choose_server(settings: GatewaySettings) -> str:
    """``"granian"`` or ``"uvicorn"`` for ``settings.server``; ConfigError if not installed."""
    wanted = settings.server
    missing = {name: [m for m in modules if importlib.util.find_spec(m) is None]
               for name, modules in SERVERS.items()}
    installed = [name for name in SERVERS if not missing[name]]
    if wanted == "auto":
        if not installed:
            raise ConfigError("no HTTP server for the gateway: pip install 'lbmiddleware[gateway]'"
                              " (granian, or uvicorn with httptools)")
        return installed[0]
    if wanted not in installed:
        names = " ".join(missing[wanted])
        raise ConfigError(f"LB_SERVER has value {wanted!r}: {names} is not installed "
                          f"(pip install {names})")
    return wanted


def check_libraries(settings: FrontEndSettings) -> None:
    """ConfigError naming the source and the extra to install when a source's library is
    missing (dnspython for DNS): found before the server starts, not by its worker building
    the pool (granian's would crash with a traceback)."""
    for source in settings.core.sources:
        try:
            require_library(source)
        except ModuleNotFoundError as exc:
            raise ConfigError(str(exc)) from None


class CannotListen(OSError):
    """An address of the gateway could not be bound: which one, of which setting, and why."""

    def __init__(self, address: tuple[str, int], variable: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.address = address
        self.variable = variable

    def __str__(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"cannot listen on {shown}:{port} ({self.variable}): {self.strerror}"


def bind_setting(address: tuple[str, int], variable: str) -> socket.socket:
    """:func:`bind`, raising :class:`CannotListen` naming ``variable`` when it fails."""
    try:
        return bind(address)
    except OSError as exc:
        raise CannotListen(address, variable, exc) from exc


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on ``(host, port)``; port 0 lets the OS choose."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it; plain asyncio sets it only on IPPROTO_TCP sockets, and
    # without it every response waits ~40 ms on the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: FrontEndSettings, *, out: TextIO = sys.stdout) -> None:
    """Run the gateway until interrupted (SIGINT / SIGTERM); ``settings`` from
    :func:`load_settings`. Raises ``ConfigError`` when the chosen server, or a source's
    library, is not installed and ``OSError`` when the address is taken."""
    gateway = settings[GatewaySettings]
    server = choose_server(gateway)
    check_libraries(settings)
    sock = bind_setting(gateway.listen_address, "LB_LISTEN")
    host, port = sock.getsockname()[:2]
    admin = None
    if gateway.admin_address is not None:
        try:
            # Bound here, before granian forks (its worker serves on this very socket), so
            # port 0 is resolved once and printed.
            admin = bind_setting(gateway.admin_address, "LB_ADMIN_LISTEN")
        except OSError:
            sock.close()
            raise
    if server == "granian":
        sock.close()        # granian binds the address itself (port 0: the one just found)
    backends = ", ".join(b.url for b in settings.core.backends)
    line = (f"lbmiddleware gateway listening on {_url(host, port)} "
            f"(prefix {settings[ProxySettings].prefix}, policy {settings.core.policy}, "
            f"{server}) -> {backends}")
    if admin is not None:
        line += f"; admin {_url(*admin.getsockname()[:2])}/status"
    banner = functools.partial(print, line, file=out, flush=True)
    try:
        if server == "granian":
            _serve_granian(settings, host, port, banner, admin)
        else:
            banner()            # the sockets listen already: connections wait in the backlog
            _serve_uvicorn(settings, sock, admin)
    finally:
        sock.close()
        if admin is not None:
            admin.close()


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _serve_uvicorn(settings: FrontEndSettings, sock: socket.socket,
                   admin: socket.socket | None) -> None:
    import uvicorn

    gateway = settings[GatewaySettings]
    config = uvicorn.Config(
        make_app(settings, admin_socket=admin), lifespan="on", access_log=False,
        log_config=_logging_config(settings),
        log_level=_server_log_level(gateway.log_level),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_uvicorn_protocol(gateway, access_log=settings[ProxySettings].access_log),
        proxy_headers=False, server_header=False,
        date_header=False,
        # never upgraded by uvicorn, whatever is installed: the proxy refuses WebSockets
        ws="none",
        # a backstop: GatewayProtocol closes the connections after shutdown_timeout, and
        # the proxy ends its exchanges when it sees them gone; tasks left are cancelled.
        # (typed int, used as asyncio.timeout(): sub-second values work and are kept)
        timeout_graceful_shutdown=gateway.shutdown_timeout + 1.0,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down on SIGTERM, then raises it again for the handler it found; by
    # default that kills the process (status -15): make it a KeyboardInterrupt, as SIGINT.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if config.loop == "uvloop":
            import uvloop
            uvloop.run(server.serve(sockets=[sock]))
        else:
            asyncio.run(server.serve(sockets=[sock]))
    finally:
        signal.signal(signal.SIGTERM, previous)


class RefusalWarnings:
    """Connections the gateway turns away for one ``reason``, told to the operator as a
    WARNING (``"<reason>: <n> connections <action> in the last <s> s"``) at most once every
    ``interval`` seconds, with how many since the line before: shedding load must show,
    and a flood of clients must not flood the log too. Call it once per connection turned
    away; from one thread (the event loop, or the admin listener's accepting thread)."""

    def __init__(self, reason: str, action: str, *, interval: float = 10.0,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.reason = reason
        self.action = action
        self.interval = interval
        self._timer = timer
        self._count = 0
        self._last: float | None = None         # when the last line was written

    def __call__(self) -> None:
        self._count += 1
        now = self._timer()
        if self._last is not None and now - self._last < self.interval:
            return
        count, self._count = self._count, 0
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self._last = now
        logger.warning("%s: %d connection%s %s%s", self.reason, count,
                       "" if count == 1 else "s", self.action, since)


def _closing_response(error: ErrorResponse) -> bytes:
    """``error`` as the bytes of an HTTP/1.1 response that closes its connection."""
    head = [f"HTTP/1.1 {error.status} {error.reason}",
            *(f"{name}: {value}" for name, value in error.headers), "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + error.body


# The proxy's own 503, written by the server protocol before any ASGI request exists.
_TOO_MANY_CONNECTIONS = _closing_response(error_response(503, "too many connections"))


def _uvicorn_protocol(settings: GatewaySettings, *, access_log: bool = False) -> type:
    """uvicorn's httptools protocol with the gateway's limits (``settings``); ``access_log``
    (``LB_ACCESS_LOG``): each connection answered 503 beyond the limit gets its line."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    refused = RefusalWarnings(
        f"too many connections (LB_MAX_CONNECTIONS={settings.max_connections})",
        "answered 503 and closed")

    class GatewayProtocol(HttpToolsProtocol):
        """Adds what uvicorn lacks and granian has: a time limit on each request head
        (from the connection's start, or the head's first byte on a kept-alive one, or
        for a pipelined head the end of the response before it; data arriving does not
        extend it), a limit on client connections (beyond it: 503 and close at once, so slow
        clients cannot use up file descriptors; an access line, no request read: ``-`` for
        its method and path, and a WARNING at most every 10 s), and a bounded grace on
        shutdown. Header fields after the head (chunked trailers) are ignored:
        uvicorn would append them to ``scope["headers"]`` and the proxy forward them.
        """

        _in_head = False
        _head_timer: asyncio.TimerHandle | None = None
        _close_timer: asyncio.TimerHandle | None = None

        def connection_made(  # type: ignore[override]  # as uvicorn's: a stream's Transport
                self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                transport.write(_TOO_MANY_CONNECTIONS)
                transport.close()
                refused()
                if access_log and access_logger.isEnabledFor(logging.INFO):
                    peer = transport.get_extra_info("peername")
                    access_logger.info(access_line(peer[0] if peer else None, "-", "-", 503,
                                                   None, 0, 0.0))
                return
            self._head_timer = self.loop.call_later(settings.header_timeout, self._head_late)

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._head_timer, self._close_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._in_head = True
            cycle: RequestResponseCycle | None = self.cycle     # None before the first request
            if cycle is None or cycle.response_complete:
                self._start_head_timer()
            # else a pipelined head while a response streams: its time starts when the
            # connection is idle (on_response_complete), or it would cut that response
            super().on_message_begin()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_head and not self.transport.is_closing():
                self._start_head_timer()

        def _start_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(settings.header_timeout, self._head_late)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._in_head:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def _unsupported_upgrade_warning(self) -> None:
            """Silent: the proxy answers a WebSocket handshake 501 and forwards other
            upgrades (h2c) as plain requests; uvicorn's two warnings for each such
            request would only flood the log."""

        def shutdown(self) -> None:
            super().shutdown()
            if not self.transport.is_closing():
                self._close_timer = self.loop.call_later(settings.shutdown_timeout,
                                                         self.transport.close)

    return GatewayProtocol


def _wait_until_listening(host: str, port: int, alive: Callable[[], bool],
                          timeout: float = 30.0) -> bool:
    """Whether ``host:port`` accepts a connection within ``timeout`` seconds; False at
    once when ``alive()`` turns false (the worker died). Runs in the caller's thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            time.sleep(0.02)
            continue
        return True
    return False


def _serve_granian(settings: FrontEndSettings, host: str, port: int,
                   banner: Callable[[], None], admin: socket.socket | None) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    if TYPE_CHECKING:       # granian picks its server class when imported: a variable
        from granian.server import MPServer as Server
    else:
        from granian.server import Server

    gateway = settings[GatewaySettings]

    class AnnouncingServer(Server):
        """granian's server, printing the banner once its worker accepts connections.

        granian forks its worker after its startup hooks ran, and on Linux the worker
        binds its own socket, so the port is probed after the fork, in the main thread.
        Never from a thread alive across the fork: the probe's ``getaddrinfo`` imports
        ``encodings.idna``, and a worker forked while another thread held that import's
        lock froze on its first host name or TLS connection.
        """

        def startup(self, spawn_target: Callable[..., Any],
                    target_loader: Callable[..., Any]) -> None:
            super().startup(spawn_target, target_loader)  # type: ignore[no-untyped-call]
            # (the admin socket stays open here: each worker granian starts, on SIGHUP or
            # after a crash, gets its copy by the fork and serves on it)
            if _wait_until_listening(host, port, lambda: all(w.is_alive() for w in self.wrks)):
                banner()

    server = AnnouncingServer(
        "lbmiddleware.gateway:make_app", address=host, port=port, interface=Interfaces.ASGI,
        workers=1, loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        http=HTTPModes.http1, websockets=False, log_access=False,
        # the worker configures logging with it again, after the fork
        log_dictconfig=_logging_config(settings),
        log_level=LogLevels(_server_log_level(gateway.log_level)),
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(gateway.header_timeout * 1000))),
        backpressure=gateway.max_connections,       # connections a worker accepts at once
        # then the worker is killed (typed int, used as a join() timeout: a float works)
        workers_kill_timeout=gateway.shutdown_timeout)  # type: ignore[arg-type]
    server.serve(target_loader=functools.partial(make_app, settings, admin_socket=admin),
                 wrap_loader=False)
