"""The adapter's urllib3 pools of backends that left the balancer: closed without cutting a
request.

A fleet changes its members (a rolling deploy gives every replica a new address), and the
adapter keeps a urllib3 pool per backend it picked: without this, each departed backend's
keep-alive connections would stay open (in ``CLOSE_WAIT`` once it stops) for as long as the
Session lives. The balancer announces every departure in
:class:`~lbmiddleware.core.events.MembershipChanged` (``removed``: whether it drains or
not, ``drain()`` included), and :func:`close_departed` then, for each of the adapter's pool
managers:

* takes the pools of that ``scheme://host:port`` out of the manager, so a backend that
  comes back later gets fresh pools (and their number stays that of the members);
* closes their idle connections at once;
* makes the pools close each connection in use when it comes back, instead of keeping it:
  a request in flight on a departing backend (it drains) ends normally, on a pool that
  still hands out connections, and no connection outlives it. A drain that times out
  leaves its requests to end the same way: nothing is cut.

A pool whose address a member still uses (two backends on one ``host:port``, with other
base paths) is left alone. urllib3 pools are thread-safe for this: the balancer runs its
listeners on whatever thread caused the event.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Iterable
from typing import Any, cast

from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool

from ..core.backend import Backend

__all__ = ["close_departed"]


def close_departed(managers: Iterable[PoolManager], removed: Iterable[Backend],
                   members: Iterable[Backend]) -> int:
    """Close the pools of ``managers`` that served ``removed`` backends and no member: idle
    connections now, those in use as they come back. Returns the number of pools closed."""
    staying = {_address(b) for b in members}
    leaving = {_address(b) for b in removed} - staying
    closed = 0
    if not leaving:
        return closed
    for manager in managers:
        pools = manager.pools
        for key in pools.keys():
            if (key.key_scheme, key.key_host, key.key_port) in leaving:
                with pools.lock:        # taken out as one step, whoever else looks it up
                    pool = pools.get(key)
                    if pool is not None:
                        del pools[key]
                if pool is not None:
                    _leave(pool)
                    closed += 1
    return closed


def _address(backend: Backend) -> tuple[str, str, int]:
    """A backend's urllib3 pool key fields (``key_scheme``, ``key_host``, ``key_port``)."""
    return backend.scheme, backend.host, backend.port


def _leave(pool: HTTPConnectionPool) -> None:
    """From now on ``pool`` closes each connection handed back; its idle ones close now."""
    pool.__class__ = _leaving(type(pool))  # type: ignore[arg-type]  # (mypy issue 11470)
    _close_idle(pool)


def _close_idle(pool: HTTPConnectionPool) -> None:
    """Close the idle connections of ``pool``; the pool still works (a request in flight
    that had it gets a new connection)."""
    slots = pool.pool
    if slots is None:
        return                          # closed already
    taken = 0
    try:
        while True:
            connection = slots.get(block=False)
            taken += 1
            if connection is not None:
                connection.close()
    except queue.Empty:
        pass
    for _ in range(taken):             # the free slots back, so no one waits for them
        try:
            slots.put(None, block=False)
        except queue.Full:
            break


class _Leaving(HTTPConnectionPool):
    """Mixin for a pool whose backend left: a connection handed back is closed (its slot
    stays free), and ``close()`` closes the idle ones without disabling the pool, so a
    request still in flight on it is never refused."""

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.close()
        super()._put_conn(None)

    def close(self) -> None:
        _close_idle(self)


@functools.cache
def _leaving(pool_class: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    """``pool_class`` that closes what comes back (only departed pools become one: the
    others pay nothing for it)."""
    if issubclass(pool_class, _Leaving):
        return pool_class
    return cast("type[HTTPConnectionPool]",
                type(pool_class.__name__, (_Leaving, pool_class), {}))
