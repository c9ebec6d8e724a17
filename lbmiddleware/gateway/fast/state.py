"""What every client connection of one fast server shares (:class:`ServerState`): the server
makes it once, each :class:`~.connection.ClientConnection` reads it, and the exchanges reach
it through their connection (``connection.state``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...upstream.deadlines import Deadlines
from ..logs import RefusalWarnings
from .wire import DateHeader

if TYPE_CHECKING:
    import asyncio

    from ...gateway_settings import GatewaySettings
    from .connection import Dispatch
    from .outbox import Outbox

__all__ = ["ServerState"]


class ServerState:
    """What every connection of one server shares: the gateway's ``settings``
    (:class:`~lbmiddleware.gateway_settings.GatewaySettings`), the ``dispatcher``, the
    ``Date`` line (``date``), the timeouts' buckets (``deadlines``), the open connections
    (``connections``: those handed off to uvicorn's protocols too, so that
    ``LB_MAX_CONNECTIONS`` counts them all), ``handoff(transport, data)`` for an upgrade,
    the listener's ``scheme``, whether refusals get an access line (``access_log``), the
    WARNINGs for connections turned away (``refused``) and malformed requests
    (``malformed``), and the writes held for the end of the loop's turn (``outbox``: the
    first connection makes it when none is given; the upstream pools share it)."""

    __slots__ = ("settings", "dispatcher", "handoff", "scheme", "access_log", "date",
                 "deadlines", "connections", "refused", "malformed", "outbox")

    def __init__(self, settings: GatewaySettings, dispatcher: Dispatch,
                 handoff: Callable[[asyncio.Transport, bytes], None], *, scheme: str = "http",
                 access_log: bool = False, date: DateHeader | None = None,
                 deadlines: Deadlines | None = None, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.handoff = handoff
        self.scheme = scheme
        self.access_log = access_log
        self.date = date if date is not None else DateHeader()
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.connections: set[Any] = set()
        self.refused = RefusalWarnings(
            f"too many connections (LB_MAX_CONNECTIONS={settings.max_connections})",
            "answered 503 and closed")
        self.malformed = RefusalWarnings("malformed requests", "answered 400 and closed")
        self.outbox = outbox
