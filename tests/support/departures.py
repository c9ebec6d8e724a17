"""Seeing, on a :class:`~tests.support.servers.BackendServer`'s side, that a front-end closed
its connections to a backend that left the balancer, and that a closed front-end stopped
following a shared balancer (the departures tests of the adapter, ASGI and WSGI)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import lbmiddleware as lb

from .servers import BackendServer
from .waiting import wait_for


def open_connections(server: BackendServer) -> int:
    """Connections the server has open (accepted, not yet seen closed)."""
    with server.lock:
        return len(server.open_sockets)


def closed_by_the_client(server: BackendServer, timeout: float = 5.0) -> bool:
    """Wait until the server has no connection open; True if it came to that in time.
    (Call it through ``asyncio.to_thread`` where the closing happens on a running loop.)"""
    return wait_for(lambda: open_connections(server) == 0, timeout)


def record_unsubscribes(pool: lb.Balancer, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """From now on, every listener of ``pool`` that unsubscribes is appended to the list
    returned (a front-end's ``close()`` unsubscribes the one it subscribed)."""
    unsubscribed: list[object] = []
    subscribe = pool.subscribe

    def recording(listener: Callable[..., object]) -> Callable[[], None]:
        unsubscribe = subscribe(listener)

        def recorded() -> None:
            unsubscribed.append(listener)
            unsubscribe()

        return recorded

    monkeypatch.setattr(pool, "subscribe", recording)
    return unsubscribed
