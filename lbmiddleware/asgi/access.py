"""The ASGI middleware's access log: one request's line in the making
(:class:`AccessRecord`), written with :func:`lbmiddleware.proxy.access.access_line`.

Made only when the access log is on: the record wraps ``send`` to see the status the
client got (whoever answered: a backend, the proxy's own 502, 503 or 504, a refusal, a
WebSocket handshake's denial, 101 for a WebSocket accepted: its line is written at its
close, so its duration is the socket's life), and
is given the request's :class:`~lbmiddleware.asgi.exchange.Exchange`, whose attempts name
the backends tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from ..proxy.access import CLIENT_CLOSED, access_line, logger

if TYPE_CHECKING:
    from ..core.attempts import Attempts

__all__ = ["AccessRecord"]

# The messages that carry the status the client gets: a response's start, and a WebSocket
# handshake's denial response (the ASGI extension ``websocket.http.response``).
_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})

# A WebSocket closed before its handshake is accepted: the server answers 403 (the ASGI spec).
_CLOSED_BEFORE_HANDSHAKE = 403
# A WebSocket accepted: the server answers 101 Switching Protocols.
_SWITCHING = 101

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class Attempted(Protocol):
    """What the record reads of a proxied request (an :class:`~.exchange.Exchange`, a
    WebSocket's :class:`~.websocket.Tunnel`): the backends tried, and whether the client
    left before it was answered."""

    @property
    def attempts(self) -> Attempts | None: ...

    @property
    def gone(self) -> bool: ...


class AccessRecord:
    """One request's access log line in the making; call it as the request's ``send``."""

    __slots__ = ("send", "status", "exchange", "settle", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None
        self.exchange: Attempted | None = None
        #: Called before an HTTP response's start goes out (the exchange's
        #: :meth:`~.exchange.Exchange.settle`): a client already gone is heard first, and
        #: the line says 499, not a status its server dropped unsent.
        self.settle: Callable[[], Awaitable[None]] | None = None
        self.started = time.monotonic()

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in _STARTS:
            settle = self.settle
            if settle is not None and kind == "http.response.start":
                await settle()
            self.status = message["status"]
        elif kind == "websocket.accept":
            self.status = _SWITCHING
        elif kind == "websocket.close" and self.status is None:
            self.status = _CLOSED_BEFORE_HANDSHAKE
        await self.send(message)

    def log(self, client: str | None, method: str, path: str, gone: bool = False) -> None:
        """Write the line (``gone``: the client left; without a status begun it is 499)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        exchange = self.exchange
        tried = exchange.attempts.tried if exchange is not None and exchange.attempts else ()
        status = self.status
        if status is None and (gone or (exchange is not None and exchange.gone)):
            status = CLIENT_CLOSED
        logger.info(access_line(client, method, path, status, tried[-1].url if tried else None,
                                len(tried), time.monotonic() - self.started))
