"""The async transport on a real event loop against real loopback backends: many requests
at once with exact accounting, cancellation mid-request and mid-stream, a source (etcd)
followed through the transport, departures closed on the loop, the loop never blocked.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport

from ..support.departures import closed_by_the_client, open_connections
from ..support.etcd import EtcdServer
from ..support.waiting import LoopTicks, until_async

VHOST = "http://svc"
CONCURRENT = 1000


def in_flight(pool: lb.Balancer) -> list[int]:
    return [row["in_flight"] for row in pool.stats()]


def test_a_thousand_concurrent_requests_are_each_counted_once(backends):
    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([s.url for s in backends], policy="least_conn")
        # (a generous timeout: the test backends are threads; this is about the counts)
        async with httpx.AsyncClient(transport=transport, base_url=VHOST, timeout=60) as client:
            ticks = LoopTicks(0)
            responses = await asyncio.wait_for(
                asyncio.gather(*(client.get(f"/item/{i}") for i in range(CONCURRENT))), 90)
            ticks.stop()
            assert all(r.status_code == 200 for r in responses)
            assert sorted(r.json()["path"] for r in responses) == \
                sorted(f"/item/{i}" for i in range(CONCURRENT))
            stats = transport.balancer.stats()
            assert in_flight(transport.balancer) == [0, 0, 0]
            assert sum(row["requests"] for row in stats) == CONCURRENT
            assert [row["failures"] for row in stats] == [0, 0, 0]
            # (by path: on this shared machine a port can reach a test's backend from a
            # client of another process that used it before, a health check say)
            received = [r for s in backends for r in s.received]
            ours = [path for _, path, _, _ in received if path.startswith("/item/")]
            assert sorted(ours) == sorted(f"/item/{i}" for i in range(CONCURRENT)), \
                Counter(path for _, path, _, _ in received if not path.startswith("/item/"))
            served = Counter(r.json()["server"] for r in responses)
            assert set(served) == {"a", "b", "c"}
            assert ticks.count > 10         # the loop kept turning meanwhile

    asyncio.run(scenario())


def test_a_task_cancelled_while_it_waits_for_the_head_releases_its_pick(backends):
    a = backends[0]
    a.behaviour = "hang"

    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([a.url])
        async with httpx.AsyncClient(transport=transport) as client:
            task = asyncio.ensure_future(client.get(f"{VHOST}/"))
            await until_async(lambda: a.requests == 1, what="the request reached a")
            assert in_flight(transport.balancer) == [1]
            task.cancel()
            await asyncio.wait([task])
            assert task.cancelled()
            row = transport.balancer.stats()[0]
            assert (row["in_flight"], row["requests"], row["failures"]) == (0, 0, 0)

    asyncio.run(scenario())


def test_a_task_cancelled_mid_stream_releases_its_pick(backends):
    a = backends[0]
    a.behaviour, a.body_size = "stall", 100_000     # half the body, then nothing

    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([a.url])
        async with httpx.AsyncClient(transport=transport) as client:
            first_piece = asyncio.Event()

            async def read() -> None:
                async with client.stream("GET", f"{VHOST}/big") as response:
                    async for _ in response.aiter_raw():
                        first_piece.set()

            task = asyncio.ensure_future(read())
            await asyncio.wait_for(first_piece.wait(), 5)
            assert in_flight(transport.balancer) == [1]
            task.cancel()
            await asyncio.wait([task])
            row = transport.balancer.stats()[0]
            assert (row["in_flight"], row["requests"], row["failures"]) == (0, 0, 0)
        assert await asyncio.to_thread(a.peer_closed.wait, 5)   # its connection closed

    asyncio.run(scenario())


def test_a_timeout_mid_stream_is_a_failure_of_the_backend(backends):
    a = backends[0]
    a.behaviour, a.body_size = "stall", 100_000

    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([a.url], read_timeout=0.3)
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                await client.get(f"{VHOST}/big")
            except httpx.ReadTimeout:
                pass
            else:
                raise AssertionError("the stalled body did not time out")
            row = transport.balancer.stats()[0]
            assert (row["in_flight"], row["failures"]) == (0, 1)
            assert row["bytes_received"] == 50_000

    asyncio.run(scenario())


def test_replicas_in_etcd_are_followed_and_departed_ones_lose_their_connections(servers,
                                                                                 tmp_path):
    """Through a real source: the pool is built inside the loop (it does not wait there),
    so the first request awaits the source's first answer; each deploy registers a new
    replica and deletes the old one's key, and the departed replica's connections are
    closed on the loop, from the pool's background thread."""
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        old = servers("b0")
        etcd.put("services/web/b0", old.url)

        async def scenario() -> None:
            nonlocal old
            transport = AsyncLoadBalancingTransport([etcd.source("services/web")])
            async with httpx.AsyncClient(transport=transport, base_url=VHOST) as client:
                assert (await client.get("/x")).json()["server"] == "b0"
                departed = []
                for i in range(3):
                    new = servers(f"b{i + 1}")
                    etcd.put(f"services/web/{new.name}", new.url)
                    etcd.delete(f"services/web/{old.name}")
                    await until_async(
                        lambda url=new.url: transport.balancer.backends == (lb.Backend(url),),
                        limit=10, what="the pool followed etcd")
                    assert (await client.get("/x")).json()["server"] == new.name
                    departed.append(old)
                    old = new
                for server in departed:
                    assert await asyncio.to_thread(closed_by_the_client, server)
                assert open_connections(old) == 1
                assert in_flight(transport.balancer) == [0]

        asyncio.run(scenario())
    finally:
        etcd.stop()


def test_a_departure_from_another_thread_is_closed_on_the_loop(servers):
    old, new = servers("old"), servers("new")

    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([old.url])
        async with httpx.AsyncClient(transport=transport, base_url=VHOST) as client:
            (await client.get("/x")).raise_for_status()
            assert open_connections(old) == 1
            await asyncio.to_thread(transport.balancer.update, [new.url])
            assert await asyncio.to_thread(closed_by_the_client, old)
            assert (await client.get("/x")).json()["server"] == "new"

    asyncio.run(scenario())


def test_aclose_closes_the_connections_and_a_shared_pool_stays_open(servers):
    a = servers("a")

    async def scenario() -> None:
        pool = lb.Balancer([a.url])
        async with httpx.AsyncClient(transport=AsyncLoadBalancingTransport(balancer=pool)) \
                as client:
            (await client.get(f"{VHOST}/")).raise_for_status()
        assert await asyncio.to_thread(closed_by_the_client, a)
        async with httpx.AsyncClient(transport=AsyncLoadBalancingTransport(balancer=pool)) \
                as client:
            assert (await client.get(f"{VHOST}/")).status_code == 200
        await pool.aclose()

    asyncio.run(scenario())
