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
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .asgi import LoadBalancerMiddleware
from .core.settings import FrontEndSettings
from .errors import ConfigError
from .fleet.pool import require_library
from .gateway_settings import GatewaySettings, load_settings
from .proxy import ErrorResponse, error_response
from .proxy.settings import ProxySettings

__all__ = ["load_settings", "make_app", "app_from_env", "choose_server", "check_libraries",
           "bind", "serve"]

# The modules each server needs: under uvicorn the gateway's protocol (head timeout,
# connection limit, no trailers as headers) extends uvicorn's httptools protocol.
SERVERS = {"granian": ("granian",), "uvicorn": ("uvicorn", "httptools")}


def make_app(settings: FrontEndSettings) -> LoadBalancerMiddleware:
    """The gateway's ASGI application: the proxy with no app behind it (``settings``: from
    :func:`load_settings`)."""
    return LoadBalancerMiddleware(None, settings=settings)


def app_from_env() -> LoadBalancerMiddleware:
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
    sock = bind(gateway.listen_address)
    host, port = sock.getsockname()[:2]
    if server == "granian":
        sock.close()        # granian binds the address itself (port 0: the one just found)
    shown = f"[{host}]" if ":" in host else host
    backends = ", ".join(b.url for b in settings.core.backends)
    banner = functools.partial(
        print, f"lbmiddleware gateway listening on http://{shown}:{port} "
               f"(prefix {settings[ProxySettings].prefix}, policy {settings.core.policy}, "
               f"{server}) -> {backends}",
        file=out, flush=True)
    if server == "granian":
        _serve_granian(settings, host, port, banner)
    else:
        try:
            banner()            # the socket listens already: connections wait in its backlog
            _serve_uvicorn(settings, sock)
        finally:
            sock.close()


def _serve_uvicorn(settings: FrontEndSettings, sock: socket.socket) -> None:
    import uvicorn

    gateway = settings[GatewaySettings]
    config = uvicorn.Config(
        make_app(settings), lifespan="on", access_log=False, log_level="warning",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_uvicorn_protocol(gateway), proxy_headers=False, server_header=False,
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


def _closing_response(error: ErrorResponse) -> bytes:
    """``error`` as the bytes of an HTTP/1.1 response that closes its connection."""
    head = [f"HTTP/1.1 {error.status} {error.reason}",
            *(f"{name}: {value}" for name, value in error.headers), "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + error.body


# The proxy's own 503, written by the server protocol before any ASGI request exists.
_TOO_MANY_CONNECTIONS = _closing_response(error_response(503, "too many connections"))


def _uvicorn_protocol(settings: GatewaySettings) -> type:
    """uvicorn's httptools protocol with the gateway's limits (``settings``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    class GatewayProtocol(HttpToolsProtocol):
        """Adds what uvicorn lacks and granian has: a time limit on each request head
        (from the connection's start, or the head's first byte on a kept-alive one, or
        for a pipelined head the end of the response before it; data arriving does not
        extend it), a limit on client connections (beyond it: 503 and
        close at once, so slow clients cannot use up file descriptors), and a bounded
        grace on shutdown. Header fields after the head (chunked trailers) are ignored:
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
                   banner: Callable[[], None]) -> None:
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
            if _wait_until_listening(host, port, lambda: all(w.is_alive() for w in self.wrks)):
                banner()

    server = AnnouncingServer(
        "lbmiddleware.gateway:make_app", address=host, port=port, interface=Interfaces.ASGI,
        workers=1, loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        http=HTTPModes.http1, websockets=False, log_level=LogLevels.warning, log_access=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(gateway.header_timeout * 1000))),
        backpressure=gateway.max_connections,       # connections a worker accepts at once
        # then the worker is killed (typed int, used as a join() timeout: a float works)
        workers_kill_timeout=gateway.shutdown_timeout)  # type: ignore[arg-type]
    server.serve(target_loader=functools.partial(make_app, settings), wrap_loader=False)
