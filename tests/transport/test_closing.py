"""Closing a transport while its requests run (they end as they would have, no backend is
blamed, nothing is sent after), and using it after its client closed it (refused, saying
what to do instead, as a closed ``httpx.Client`` refuses)."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc

import httpx
import pytest

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

from ..support.departures import closed_by_the_client, open_connections
from ..support.waiting import until_async, wait_for

VHOST = "http://svc"
DROPPED = 5000


def failures(pool: lb.Balancer) -> list[int]:
    return [row["failures"] for row in pool.stats()]


def in_background(call) -> tuple[threading.Thread, list[object]]:
    """``call()`` on a thread of its own: its result (or the httpx error it raised) lands in
    the list returned."""
    answers: list[object] = []

    def run() -> None:
        try:
            answers.append(call())
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


@pytest.mark.parametrize("stream", [False, True])
def test_closing_the_client_mid_request_lets_it_end_and_blames_no_backend(servers, stream):
    """Client.close() while another thread's request waits for a's answer: the request ends
    as it would have (httpcore's close would cut its connection in use, and a healthy
    replica of a shared pool would be ejected, max_fails=1, for a client shutting down),
    nothing goes to b, and a's connection is closed once the answer is read."""
    a, b = servers("a"), servers("b")
    a.delay = 0.6
    pool = lb.Balancer([a.url, b.url], max_fails=1)
    client = httpx.Client(transport=LoadBalancingTransport(balancer=pool), base_url=VHOST)

    def call() -> str:
        if stream:
            with client.stream("GET", "/slow") as response:
                return str(response.json()["server"]) if response.read() else ""
        return str(client.get("/slow").json()["server"])

    thread, answers = in_background(call)
    try:
        assert wait_for(lambda: a.requests == 1)
        client.close()
    finally:
        thread.join(10)
    try:
        assert answers == ["a"]
        assert (failures(pool), [row["state"] for row in pool.stats()]) == \
            ([0, 0], ["healthy", "healthy"])
        assert [row["in_flight"] for row in pool.stats()] == [0, 0]
        assert b.requests == 0
        assert closed_by_the_client(a)
    finally:
        pool.close()


def test_an_attempt_that_fails_after_the_close_is_released_and_not_retried(servers):
    """a drops the connection once the client has closed: the caller gets the error, a is
    not counted as failing (the close may have been the cause) and b gets nothing."""
    a, b = servers("a"), servers("b")
    a.delay, a.behaviour = 0.6, "close"
    pool = lb.Balancer([a.url, b.url], max_fails=1)
    client = httpx.Client(transport=LoadBalancingTransport(balancer=pool), base_url=VHOST)
    thread, answers = in_background(lambda: client.get("/slow"))
    try:
        assert wait_for(lambda: a.requests == 1)
        client.close()
    finally:
        thread.join(10)
    try:
        (answer,) = answers
        assert isinstance(answer, httpx.RemoteProtocolError), answer
        assert answer.backends_tried == (a.url,)
        assert (failures(pool), [row["in_flight"] for row in pool.stats()]) == ([0, 0], [0, 0])
        assert b.requests == 0
    finally:
        pool.close()


def test_aclose_mid_request_lets_them_end_and_blames_no_backend(servers):
    a, b = servers("a"), servers("b")
    a.delay = b.delay = 0.6

    async def scenario() -> tuple[list[object], list[int]]:
        pool = lb.Balancer([a.url, b.url], max_fails=1)
        client = httpx.AsyncClient(transport=AsyncLoadBalancingTransport(balancer=pool),
                                   base_url=VHOST)
        tasks = [asyncio.ensure_future(client.get("/slow")) for _ in range(4)]
        await until_async(lambda: a.requests + b.requests == 4, what="4 requests sent")
        await client.aclose()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        counts = failures(pool)
        await pool.aclose()
        return results, counts

    results, counts = asyncio.run(scenario())
    assert sorted(r.json()["server"] for r in results) == ["a", "a", "b", "b"], results
    assert counts == [0, 0]
    assert a.requests + b.requests == 4
    assert wait_for(lambda: open_connections(a) + open_connections(b) == 0)


def test_a_closed_transport_refuses_saying_what_to_do_instead(servers):
    """A transport kept across short-lived clients: the first client's exit closed it (and
    the pool it built: its sources and health checks stopped), so the next client's request
    is refused with the way out, not served by a pool that no longer follows its source."""
    a = servers("a")

    async def scenario() -> str:
        transport = AsyncLoadBalancingTransport([a.url])
        async with httpx.AsyncClient(transport=transport, base_url=VHOST) as client:
            (await client.get("/x")).raise_for_status()
        async with httpx.AsyncClient(transport=transport, base_url=VHOST) as client:
            with pytest.raises(RuntimeError) as refused:
                await client.get("/x")
            with pytest.raises(RuntimeError):                   # another origin too
                await client.get(f"{a.url}/y")
        return str(refused.value)

    message = asyncio.run(scenario())
    assert "AsyncLoadBalancingTransport was closed (its client exited" in message
    assert "keep one client open" in message and "balancer=" in message
    assert a.requests == 1

    transport = LoadBalancingTransport([a.url])
    with httpx.Client(transport=transport) as client:
        client.get(f"{VHOST}/x").raise_for_status()
    with pytest.raises(RuntimeError, match="LoadBalancingTransport was closed"):
        httpx.Client(transport=transport).get(f"{VHOST}/x")
    with pytest.raises(RuntimeError, match="was closed"):        # nor builds a connection
        transport._targets.acquire(lb.Backend(a.url))
    assert a.requests == 2


def test_transports_dropped_without_close_leave_nothing_on_a_shared_pool():
    """A client (and its transport) per call on one shared static pool, never closed (plain
    httpx forgives it): each transport's departure listener went only at the pool's next
    departure, which a static pool never has (about 780 bytes kept per dropped transport,
    and every later one built slower). Each is unsubscribed once it is collected."""
    pool = lb.Balancer(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    AsyncLoadBalancingTransport(balancer=pool)          # (warm caches and imports)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(DROPPED):
            AsyncLoadBalancingTransport(balancer=pool)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        pool.close()
    assert kept < 500_000, f"{kept / 1e6:.1f} MB kept by {DROPPED} dropped transports"
