"""HTTP/2 through the transports, to backends that speak it (hypercorn, tests/support/
h2_server.py): ``http2=True`` over TLS (ALPN), with a DNS backend's server name; h2c with
prior knowledge through ``inner_transport``; many requests multiplexed on one connection,
each counted once and none left in flight."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

from ..conftest import CERTIFICATE_NAME
from ..support.h2_server import H2Server

VHOST = "http://svc"


@pytest.fixture
def h2_servers(certificate):
    """Starts HTTP/2 backends (``h2_servers("a", tls=True)``); stops them after the test."""
    started: list[H2Server] = []

    def start(name: str, tls: bool = False) -> H2Server:
        started.append(H2Server(name, certificate if tls else None).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_http2_over_tls_to_a_backend_named_by_its_server_name(h2_servers, certificate):
    a = h2_servers("a", tls=True)
    backend = lb.Backend(a.url, server_name=CERTIFICATE_NAME)
    trusting = ssl.create_default_context(cafile=certificate[0])
    transport = LoadBalancingTransport([backend], verify=trusting, http2=True)
    with httpx.Client(transport=transport) as client:
        response = client.get(f"{VHOST}/x?y=1")
        assert response.http_version == "HTTP/2"
        assert response.json() == {"server": "a", "path": "/x", "http_version": "2"}
    assert transport.balancer.stats()[0]["requests"] == 1


def test_without_http2_the_same_backend_is_spoken_to_in_http1(h2_servers, certificate):
    a = h2_servers("a", tls=True)
    trusting = ssl.create_default_context(cafile=certificate[0])
    with httpx.Client(transport=LoadBalancingTransport([a.url], verify=trusting)) as client:
        assert client.get(f"{VHOST}/x").json()["http_version"] == "1.1"


def test_many_requests_multiplexed_are_each_counted_once(h2_servers):
    servers = [h2_servers("a"), h2_servers("b")]

    def h2c(backend: lb.Backend) -> httpx.AsyncBaseTransport:   # prior knowledge, no TLS
        return httpx.AsyncHTTPTransport(http1=False, http2=True)

    async def scenario() -> None:
        transport = AsyncLoadBalancingTransport([s.url for s in servers], inner_transport=h2c)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            responses = await asyncio.gather(*(client.get(f"{VHOST}/n/{i}") for i in range(200)))
        assert {r.http_version for r in responses} == {"HTTP/2"}
        assert sorted(r.json()["path"] for r in responses) == sorted(f"/n/{i}" for i in range(200))
        stats = transport.balancer.stats()
        assert [row["in_flight"] for row in stats] == [0, 0]
        assert [row["requests"] for row in stats] == [100, 100]
        assert [s.requests for s in servers] == [100, 100]

    asyncio.run(scenario())
