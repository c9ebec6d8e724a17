"""The gateway under uvicorn: uvicorn's httptools protocol with the limits granian has and
uvicorn lacks (:func:`uvicorn_protocol`), the ``uvicorn.Config`` every use of uvicorn in the
gateway starts from (:func:`uvicorn_config`: :func:`serve_uvicorn`'s, and the fast server's
for the connections it hands to uvicorn's protocol), and :func:`serve_uvicorn` (https with
``LB_TLS_CERT`` / ``LB_TLS_KEY``: uvicorn wraps the socket it is given in its TLS context)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from ..core.settings import FrontEndSettings
from ..errors import needs_extra
from ..gateway_settings import GatewaySettings
from ..proxy import ErrorResponse, error_response
from ..proxy.access import access_line
from ..proxy.access import logger as access_logger
from ..proxy.settings import ProxySettings
from ..upstream.websocket import MAX_MESSAGE
from .app import make_app
from .fast.connection import MAX_HEAD, MAX_HEAD_READ, head_read
from .logs import RefusalWarnings, server_log_level, settings_logging_config
from .tls import check_certificate

if TYPE_CHECKING:
    import uvicorn

__all__ = ["serve_uvicorn", "uvicorn_config", "uvicorn_protocol"]


def serve_uvicorn(settings: FrontEndSettings, sock: socket.socket,
                  admin: socket.socket | None) -> None:
    """Serve the gateway on ``sock`` (and the admin listener on ``admin``) under uvicorn
    until SIGINT or SIGTERM."""
    import uvicorn

    with needs_extra("the gateway under uvicorn (its WebSockets)"):
        import websockets  # noqa: F401  (uvicorn's ws="websockets-sansio" runs on it)

    gateway = settings[GatewaySettings]
    check_certificate(gateway)
    config = uvicorn_config(
        make_app(settings, admin_socket=admin), settings, lifespan="on",
        log_config=settings_logging_config(settings),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # TLS 1.2 and up (uvicorn's defaults); its server.serve(sockets=) wraps each socket
        ssl_certfile=gateway.tls_cert or None, ssl_keyfile=gateway.tls_key or None,
        # a backstop: GatewayProtocol closes the connections after shutdown_timeout, and
        # the proxy ends its exchanges when it sees them gone; tasks left are cancelled.
        # (typed int, used as asyncio.timeout(): sub-second values work and are kept)
        timeout_graceful_shutdown=gateway.shutdown_timeout + 1.0,
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


def uvicorn_config(app: Any, settings: FrontEndSettings, **server: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with what every use of uvicorn in the gateway shares,
    HTTP and WebSockets alike: :func:`serve_uvicorn`'s, and the fast server's for the
    connections it hands to uvicorn's protocol (an upgrade), so that a WebSocket behaves the
    same under both. ``server``: the options of the one use (lifespan, logging, loop, TLS,
    shutdown), which may not repeat a shared one (``TypeError``)."""
    import uvicorn

    gateway = settings[GatewaySettings]
    return uvicorn.Config(
        app, access_log=False,      # (the proxy's own access log: LB_ACCESS_LOG)
        log_level=server_log_level(gateway.log_level),
        http=uvicorn_protocol(gateway, access_log=settings[ProxySettings].access_log),
        # uvicorn's own Date (RFC 9110 6.6.1: a server with a clock sends one): the proxy
        # drops the backend's Date and Server, as nginx hides them
        proxy_headers=False, server_header=False, date_header=True,
        # WebSockets are proxied: uvicorn terminates the client's (the websockets package's
        # sans-I/O implementation, the one uvicorn keeps), the proxy re-frames them upstream
        ws=answered_first(),
        # a client's message as large as a backend's may be (16 MiB, uvicorn's default too);
        # no permessage-deflate: granian has none, and the proxy's CPU is the gateway's
        # scarce resource (nginx, which tunnels, compresses nothing either)
        ws_max_size=MAX_MESSAGE, ws_per_message_deflate=False,
        **server)


@functools.cache
def answered_first() -> type[asyncio.Protocol]:
    """uvicorn's sans-I/O WebSocket protocol (``ws="websockets-sansio"``), holding what the
    client sends between its upgrade request and the answer (frames of a client that did
    not wait for the 101), its reading paused meanwhile: read once the WebSocket is
    accepted, in order, and dropped when it is refused (they are no request). uvicorn's own
    reads them at once, while the WebSocket is not open: a ping there cannot be answered,
    and bytes that are no frame make it fail an assertion (the connection cut, a traceback
    logged). One class for every use, so that the fast server's hand-off and
    :func:`serve_uvicorn` share it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class AnsweredFirst(WebSocketsSansIOProtocol):
        _held = b""

        def data_received(self, data: bytes) -> None:
            if self.handshake_initiated and not self.handshake_complete:
                if not self._held:
                    self.transport.pause_reading()
                self._held += data
            else:
                super().data_received(data)

        async def send(self, message: Any) -> None:
            await super().send(message)
            held = self._held
            if held and self.handshake_complete:
                self._held = b""
                if self.initial_response is None and not self.close_sent \
                        and not self.transport.is_closing():        # (accepted)
                    self.transport.resume_reading()
                    super().data_received(held)

    return AnsweredFirst


def _closing_response(error: ErrorResponse) -> bytes:
    """``error`` as the bytes of an HTTP/1.1 response that closes its connection."""
    head = [f"HTTP/1.1 {error.status} {error.reason}",
            *(f"{name}: {value}" for name, value in error.headers), "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + error.body


# The proxy's own 503, written by the server protocol before any ASGI request exists.
_TOO_MANY_CONNECTIONS = _closing_response(error_response(503, "too many connections"))
# ... and its 431 for a request head over MAX_HEAD (the fast server's limit).
_HEAD_TOO_LARGE = _closing_response(error_response(431))


# The request versions served (RFC 9112 2.3): the others are refused 400 in a callback.
_VERSIONS = ("1.0", "1.1")


class _UnservedVersion(Exception):
    """Raised in a parser callback: a request line of a version the gateway does not serve."""


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the head being parsed is over MAX_HEAD."""


def uvicorn_protocol(settings: GatewaySettings, *, access_log: bool = False) -> type:
    """uvicorn's httptools protocol with the gateway's limits (``settings``); ``access_log``
    (``LB_ACCESS_LOG``): each connection answered 503 beyond the limit gets its line."""
    import httptools
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
        _head_size = 0          # bytes of the head being read (request line and fields)
        _head_read = 0          # bytes read while it is incomplete (see MAX_HEAD_READ)
        _body_size = 0          # body bytes of the request being read
        _read_used = 0          # bytes of this read the requests ended in it took
        _head_refused = False
        _received = b""         # the read being parsed (for handle_websocket_upgrade)
        _head_timer: asyncio.TimerHandle | None = None
        _close_timer: asyncio.TimerHandle | None = None

        def data_received(self, data: bytes) -> None:
            """uvicorn's, with the head limit of the fast server (:data:`MAX_HEAD`): the
            fields are counted as the parser gives them, and the reads of a head that does not
            end (one field without end: httptools holds it whole) as they come, the fast
            server's way (:data:`MAX_HEAD_READ`, :func:`head_read`); over either limit, 431 and
            close (httptools and uvicorn keep every byte of a head otherwise: a flood of
            128 MiB grew the gateway by 1.7 GiB)."""
            self._read_used = 0
            self._received = data
            super().data_received(data)     # (a callback's _HeadTooLarge: uvicorn's 400 path)
            self._received = b""
            if self._head_refused:
                return
            if self._in_head:
                self._head_read = head_read(self._head_read, len(data), self._read_used)
                if self._head_read > MAX_HEAD_READ:
                    self._refuse_head()

        def _count_head(self, size: int) -> None:
            self._head_size += size
            if self._head_size > MAX_HEAD:
                self._refuse_head()
                raise _HeadTooLarge()

        def _refuse_head(self) -> None:
            self._head_refused = True
            if not self.transport.is_closing():
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            if not self._head_refused:      # (the parser's error for our raise: 431 sent)
                super().send_400_response(msg)

        def on_url(self, url: bytes) -> None:
            if self._in_head:
                self._count_head(len(url))
            super().on_url(url)

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
            self._head_size = 0
            self._head_read = -1
            self._body_size = 0
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
                self._count_head(len(name) + len(value) + 4)
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self.parser.get_http_version() not in _VERSIONS:
                # llhttp reads "HTTP/2.0" and an HTTP/0.9 line (with fields after it), and
                # uvicorn would forward either as 1.1: refused 400, as the fast server does
                raise _UnservedVersion()
            if self.parser.get_http_version() == "1.0":
                # RFC 9110 10.1.1: ignored from 1.0 (it has no 1xx to read as interim)
                self.expect_100_continue = False
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_size += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._read_used += self._head_size + self._body_size
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            """uvicorn's gives the WebSocket protocol the head alone: the bytes after it in
            the same read (frames of a client that did not wait for the 101) go to it too,
            after the head, so nothing the client sent is lost."""
            upgrade = sys.exc_info()[1]     # (uvicorn calls this in its except clause)
            super().handle_websocket_upgrade()
            if isinstance(upgrade, httptools.HttpParserUpgrade):
                rest = self._received[upgrade.args[0]:]
                protocol = self.transport.get_protocol()
                if rest and protocol is not self and isinstance(protocol, asyncio.Protocol):
                    protocol.data_received(rest)

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def _unsupported_upgrade_warning(self) -> None:
            """Silent: the proxy forwards other upgrades (h2c) as plain requests;
            uvicorn's two warnings for each such request would only flood the log."""

        def shutdown(self) -> None:
            super().shutdown()
            if not self.transport.is_closing():
                self._close_timer = self.loop.call_later(settings.shutdown_timeout,
                                                         self.transport.close)

    return GatewayProtocol
