"""The fast server's life (:func:`serve_fast`): a uvloop loop, the gateway's app built, the
banner, the app started as its lifespan would be (the admin listener, SIGHUP for a config
file, the sources' first answers), the listener of :class:`~.connection.ClientConnection`
(https with ``LB_TLS_CERT`` / ``LB_TLS_KEY``, TLS 1.2 and up), then SIGINT or SIGTERM and a
graceful shutdown.

The banner comes when it comes under uvicorn: the socket listens already (``serve`` bound
it), so a connection made after the banner waits in the listen backlog while the sources
give their first answers (up to 5 s), then is served. A signal meanwhile stops the wait.

The shutdown, as uvicorn's: stop accepting; idle connections are closed at once, busy ones
after their response or after ``LB_SHUTDOWN_TIMEOUT`` at the latest (what is left a second
later is cut, and the WebSocket hand-off's tasks still running cancelled); then the
dispatcher is closed (the upstream connections), the loop gives back the pools it owned
(the exchanges pick through each pool's lock-free lane, the loop its owner: see
:meth:`Balancer.own <lbmiddleware.core.balancer.Balancer.own>`) and the app is closed
(sources, health checks, the admin listener). SIGTERM and SIGINT both end
:func:`serve_fast` with ``KeyboardInterrupt`` once that is done, as the uvicorn path does
(``serve`` then exits with status 0); a second signal stops waiting for the requests in
flight.

Upgrades (WebSocket handshakes, h2c, CONNECT) leave the fast path (:class:`HandOff`): the
connection goes to uvicorn's protocol for the same app object, built as the uvicorn path
builds it (``gateway/uvicorn_server.py``), so WebSockets behave exactly as they do there.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core.settings import FrontEndSettings
from ...errors import needs_extra
from ...gateway_settings import GatewaySettings
from ...proxy.settings import ProxySettings
from ..app import GatewayApp, RoutesGatewayApp, make_app
from ..logs import settings_logging_config
from ..tls import check_certificate
from ..uvicorn_server import uvicorn_config
from .connection import ClientConnection, ServerState
from .wire import SERVER, DateHeader

if TYPE_CHECKING:
    import uvicorn

__all__ = ["serve_fast", "FastServer", "ServerState", "HandOff", "server_ssl_context"]

logger = logging.getLogger("lbmiddleware.gateway")

#: The listen backlog (as ``gateway/listen.py`` binds the socket).
BACKLOG = 2048
#: Seconds between two looks at the connections left, while shutting down.
_POLL = 0.05


class HandOff:
    """Connections leaving the fast path for uvicorn's protocol (an upgrade's head was
    read): :meth:`__call__` gives it the transport and the head (with the bytes after it)
    to read again. Its ``uvicorn.Config`` is made at the first hand-off, for the same app
    object, by the builder of ``serve_uvicorn``'s own (:func:`~lbmiddleware.gateway.
    uvicorn_server.uvicorn_config`: the gateway's protocol, websockets' sans-I/O WebSockets,
    the same message limit, no permessage-deflate), without its lifespan (the fast server
    runs the app's); the protocols join ``connections``, the fast server's."""

    def __init__(self, settings: FrontEndSettings, app: GatewayApp | RoutesGatewayApp,
                 connections: set[Any], date: DateHeader,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._app = app
        self._connections = connections
        self._date = date
        self._loop = loop
        self._config: uvicorn.Config | None = None
        self._state: Any = None

    @property
    def config(self) -> uvicorn.Config:
        """The hand-off's ``uvicorn.Config`` (made at the first use)."""
        config = self._config
        if config is None:
            config = self._config = self._load()
        return config

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The ASGI tasks of the handed-off connections still running."""
        return set() if self._state is None else self._state.tasks

    def __call__(self, transport: asyncio.Transport, data: bytes) -> None:
        """``data``: the head as the fast server wrote it again (it ends at the first blank
        line) and the bytes that came after it."""
        config = self.config
        state = self._state
        # uvicorn's server refreshes them each second; here at each hand-off
        state.default_headers = [(b"date", self._date.value()[6:-2]), (b"server", SERVER)]
        make: Any = config.http_protocol_class      # (the gateway's uvicorn protocol)
        protocol = make(config=config, server_state=state, app_state={}, _loop=self._loop)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        # The head first, then the rest to whichever protocol reads the connection now: the
        # WebSocket's once upgraded, else this one (h2c, served as a plain request: the next
        # request pipelined after it). uvicorn's protocol keeps nothing of a read past an
        # upgrade's head: fed together, the rest would be lost.
        end = data.index(b"\r\n\r\n") + 4
        protocol.data_received(data[:end])
        reading = transport.get_protocol()
        if len(data) > end and isinstance(reading, asyncio.Protocol) \
                and not transport.is_closing():
            reading.data_received(data[end:])

    def _load(self) -> uvicorn.Config:
        from uvicorn.server import ServerState as UvicornState

        # (logging is configured already: uvicorn's loggers get their level only)
        config = uvicorn_config(self._app, self._settings, lifespan="off", log_config=None)
        config.load()
        state = UvicornState()
        state.connections = self._connections
        self._state = state
        return config


def server_ssl_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """The listener's TLS context for ``LB_TLS_CERT`` / ``LB_TLS_KEY`` (TLS 1.2 and up, as
    uvicorn and nginx serve by default); ``None`` for plain http. Check the files first
    (:func:`~lbmiddleware.gateway.tls.check_certificate`)."""
    if not settings.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def serve_fast(settings: FrontEndSettings, sock: socket.socket, admin: socket.socket | None,
               banner: Callable[[], None]) -> None:
    """Serve the gateway on ``sock`` (and the admin listener on ``admin``) with the fast
    server until SIGINT or SIGTERM (then ``KeyboardInterrupt``); ``banner()`` once the app
    is built, before its sources' first answers (``sock`` listens: connections wait)."""
    import uvloop

    with needs_extra("the fast server (its WebSocket hand-off to uvicorn)"):
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401

    gateway = settings[GatewaySettings]
    check_certificate(gateway)
    server = FastServer(settings, sock, admin, banner, server_ssl_context(gateway))
    logging.config.dictConfig(settings_logging_config(settings))
    before = {number: signal.getsignal(number) for number in _SIGNALS}
    try:
        uvloop.run(_serve(server))
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
    if server.signals:
        raise KeyboardInterrupt


#: The signals that stop the fast server.
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _serve(server: FastServer) -> None:
    """``server`` on the running loop, stopped by SIGINT and SIGTERM."""
    loop = asyncio.get_running_loop()
    for number in _SIGNALS:
        loop.add_signal_handler(number, server.stop, number)
    try:
        await server.serve()
    finally:
        for number in _SIGNALS:
            loop.remove_signal_handler(number)


class FastServer:
    """One run of the fast server on ``sock`` (:meth:`serve`, on a running loop) until
    :meth:`stop`: the gateway's app for ``settings`` (``app``, made by :meth:`serve`),
    its dispatcher, the listener (https with ``context``), then the graceful shutdown."""

    def __init__(self, settings: FrontEndSettings, sock: socket.socket,
                 admin: socket.socket | None, banner: Callable[[], None],
                 context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.sock = sock
        self.admin = admin
        self.banner = banner
        self.context = context
        self.app: GatewayApp | RoutesGatewayApp | None = None
        #: The signals :meth:`stop` got (SIGINT, SIGTERM), in order.
        self.signals: list[int] = []
        self._stopping = asyncio.Event()
        self._force = False

    def stop(self, number: int = signal.SIGTERM) -> None:
        """Stop serving (SIGINT / SIGTERM): the first call stops the server, a second
        stops waiting for the requests in flight. On the server's loop."""
        self.signals.append(number)
        if self._stopping.is_set():
            self._force = True
        self._stopping.set()

    async def serve(self) -> None:
        """Serve until :meth:`stop`, then shut down: the requests in flight end (or are
        cut after ``LB_SHUTDOWN_TIMEOUT``), the loop gives back every pool it owned
        (:meth:`Balancer.disown <lbmiddleware.core.balancer.Balancer.disown>`: from then on
        another thread's call on a pool takes its lock instead of waiting for this loop),
        and the app is closed."""
        from .dispatch import Dispatcher

        loop = asyncio.get_running_loop()
        settings = self.settings
        gateway = settings[GatewaySettings]
        context = self.context
        app = self.app = make_app(settings, admin_socket=self.admin)
        try:
            # As under uvicorn: the socket listens already (connections wait in its backlog
            # while the sources give their first answers, up to 5 s), so the banner now;
            # an app that could not be built has ended the start before it.
            self.banner()
            if not await self._ready(app):
                return
            dispatcher = Dispatcher(app)
            date = DateHeader()
            connections: set[Any] = set()
            handoff = HandOff(settings, app, connections, date, loop)
            state = ServerState(gateway, dispatcher, handoff,
                                scheme="https" if context is not None else "http",
                                access_log=settings[ProxySettings].access_log, date=date)
            state.connections = connections
            server = await loop.create_server(
                lambda: ClientConnection(state, loop), sock=self.sock, ssl=context,
                backlog=BACKLOG,
                ssl_handshake_timeout=gateway.header_timeout if context is not None else None)
            try:
                await self._stopping.wait()
            finally:
                try:
                    await self._shutdown(server, state, handoff, gateway.shutdown_timeout)
                finally:
                    dispatcher.close()      # (the pools of the routes it served: disowned)
        finally:
            _disown(app)
            await app.aclose()

    async def _ready(self, app: GatewayApp | RoutesGatewayApp) -> bool:
        """``app.ready()`` (the admin listener, SIGHUP, the sources' first answers): True
        once it is, False when :meth:`stop` came first (the wait is cut short then: a
        SIGTERM does not wait for the sources)."""
        ready = asyncio.ensure_future(app.ready())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((ready, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not ready.done():
            ready.cancel()
            await asyncio.wait((ready,))
            return False
        ready.result()
        return not self._stopping.is_set()

    async def _shutdown(self, server: asyncio.AbstractServer, state: ServerState,
                        handoff: HandOff, grace: float) -> None:
        """Stop accepting, close the idle connections, let the busy ones end their response
        within ``grace`` seconds (each closes itself then), cut what is left a second later,
        and cancel the hand-off's tasks still running."""
        loop = asyncio.get_running_loop()
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        deadline = loop.time() + grace + 1.0
        while (state.connections or handoff.tasks) and loop.time() < deadline \
                and not self._force:
            await asyncio.sleep(_POLL)
        if state.outbox is not None:
            state.outbox.flush()                # (what was written before the cut)
        for connection in list(state.connections):
            connection.transport.abort()        # (its handler hears client_lost)
        tasks = list(handoff.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await asyncio.sleep(0)                  # (connection_lost of those just cut)


def _disown(app: GatewayApp | RoutesGatewayApp) -> None:
    """Give back every pool of ``app`` the running loop owns (on the loop's thread, once the
    last request ended): the dispatcher gives back those of the routes it served, and this
    the others, e.g. a pool a reload kept under a new route that had no request yet (its
    old route's requests made the loop its owner). A pool not owned: nothing."""
    pools = app.pools.values() if isinstance(app, RoutesGatewayApp) else (app.balancer,)
    for pool in pools:
        pool.disown()
