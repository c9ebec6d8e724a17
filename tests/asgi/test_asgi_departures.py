"""The ASGI middleware lets go of its upstream connections to backends that leave the
balancer (a fleet whose replicas come and go), on their own event loop, without cutting a
request in flight on them; against real loopback backends, each counting the connections
it has open (``open_sockets``), so a test sees on the server's side which ones closed.

The balancer's listeners run on the thread that changed the members: the loop's own (an
``update()`` in a coroutine) or another (a source's background thread, here
``asyncio.to_thread``); both are tried."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable

import pytest

import lbmiddleware as lb
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.upstream import Upstream

from ..support.asgi_client import Call
from ..support.departures import closed_by_the_client, open_connections, record_unsubscribes


async def get(app: LoadBalancerMiddleware, path: str = "/x") -> Call:
    call = await Call(app, "GET", path).run()
    assert call.status == 200, call.body
    return call


def on_the_loop(pool: lb.Balancer) -> Callable[[list[str]], Awaitable[None]]:
    async def update(urls: list[str]) -> None:
        pool.update(urls)
    return update


def on_a_thread(pool: lb.Balancer) -> Callable[[list[str]], Awaitable[None]]:
    async def update(urls: list[str]) -> None:
        await asyncio.to_thread(pool.update, urls)
    return update


UPDATES = [pytest.param(on_the_loop, id="on-the-loop"), pytest.param(on_a_thread, id="thread")]


@pytest.mark.parametrize("updater", UPDATES)
def test_rolling_deploys_leave_no_connection_to_departed_backends(servers, updater):
    async def scenario() -> None:
        old = servers("b0")
        app = LoadBalancerMiddleware(None, backends=[old.url])
        update = updater(app.balancer)
        await get(app)
        departed = []
        for i in range(20):             # each deploy: a new replica, the old one leaves
            new = servers(f"b{i + 1}")
            await update([new.url])
            for _ in range(3):
                assert (await get(app)).json()["server"] == new.name
            departed.append(old)
            old = new
        for server in departed:
            assert await asyncio.to_thread(closed_by_the_client, server), server.name
        assert open_connections(old) == 1               # the member's connection is kept
        assert [pool.backend.url for pool in app.upstream.pools()] == [old.url]
        await app.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("updater", UPDATES)
def test_a_request_in_flight_on_a_departing_backend_completes(servers, updater):
    async def scenario() -> None:
        old, new = servers("old"), servers("new")
        old.delay = 0.3                 # the answer comes after the departure
        app = LoadBalancerMiddleware(None, backends=[old.url])
        request = asyncio.ensure_future(get(app, "/slow"))
        while old.requests == 0:
            await asyncio.sleep(0.005)
        await updater(app.balancer)([new.url])      # old drains: one request in flight
        call = await request
        assert call.json()["server"] == "old"
        # closed as its response ended
        assert await asyncio.to_thread(closed_by_the_client, old)
        assert app.balancer.stats()[0]["in_flight"] == 0
        assert (await get(app)).json()["server"] == "new"
        await app.aclose()

    asyncio.run(scenario())


def test_a_drained_backend_loses_its_idle_connections(servers):
    async def scenario() -> None:
        a, b = servers("a"), servers("b")
        app = LoadBalancerMiddleware(None, backends=[a.url, b.url])
        for _ in range(4):
            await get(app)
        assert open_connections(a) == open_connections(b) == 1
        app.balancer.drain(a.url)
        assert await asyncio.to_thread(closed_by_the_client, a)
        assert open_connections(b) == 1
        await app.aclose()

    asyncio.run(scenario())


def test_a_backend_that_comes_back_gets_a_fresh_pool(servers):
    async def scenario() -> None:
        a, b = servers("a"), servers("b")
        app = LoadBalancerMiddleware(None, backends=[a.url])
        await get(app)
        (first,) = app.upstream.pools()
        app.balancer.update([b.url])
        assert await asyncio.to_thread(closed_by_the_client, a)
        app.balancer.update([a.url])
        assert (await get(app)).json()["server"] == "a"
        assert first not in app.upstream.pools()
        assert a.connections == 2 and open_connections(a) == 1
        await app.aclose()

    asyncio.run(scenario())


def test_every_middleware_on_a_shared_balancer_closes_its_own(servers, monkeypatch):
    old, new = servers("old"), servers("new")
    pool = lb.Balancer([old.url])
    unsubscribed = record_unsubscribes(pool, monkeypatch)

    async def scenario() -> None:
        apps = [LoadBalancerMiddleware(None, balancer=pool) for _ in range(2)]
        for app in apps:
            await get(app)
        assert open_connections(old) == 2
        await asyncio.to_thread(pool.update, [new.url])
        assert await asyncio.to_thread(closed_by_the_client, old)
        await apps[0].aclose()          # stops following the shared pool, which stays open
        assert len(unsubscribed) == 1
        assert (await get(apps[1])).json()["server"] == "new"
        await apps[1].aclose()
        assert len(unsubscribed) == 2

    asyncio.run(scenario())
    pool.close()


def test_a_dropped_middleware_is_not_kept_by_a_shared_balancer(servers):
    a, b = servers("a"), servers("b")
    pool = lb.Balancer([a.url])
    app = LoadBalancerMiddleware(None, balancer=pool)
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None
    pool.update([b.url])                # its listener unsubscribes itself, quietly
    pool.close()


def test_a_pool_replaced_for_a_new_server_name_closes_its_connections(servers):
    """A backend found by DNS whose name changed gets a new pool; the old one's connection,
    in use at that moment, closes when its response ends instead of idling for ever."""
    async def scenario() -> None:
        server = servers("a")
        server.delay = 0.2
        upstream = Upstream()
        first = upstream.pool(lb.Backend(server.url, server_name="old.example"))
        request = asyncio.ensure_future(first.request(b"GET", b"/x", []))
        while server.requests == 0:
            await asyncio.sleep(0.005)
        second = upstream.pool(lb.Backend(server.url, server_name="new.example"))
        response = await request
        while await response.read():
            pass
        assert response.status == 200 and second is not first
        assert await asyncio.to_thread(closed_by_the_client, server)
        upstream.close()

    asyncio.run(scenario())
