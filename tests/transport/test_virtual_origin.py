"""Which requests a transport balances: those to its virtual origin (``origin=``, else the
origin of the first request it sees); any other origin (a redirect to a CDN, a call to
another service through the same client) goes over a plain httpx transport, as it would
without the pool. And a backend's absolute redirect to itself comes back to the virtual
origin, as nginx's ``proxy_redirect default`` maps it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

VHOST = "http://svc"


def requests_of(transport: LoadBalancingTransport | AsyncLoadBalancingTransport) -> int:
    return sum(row["requests"] for row in transport.balancer.stats())


def test_a_redirect_to_another_host_is_fetched_there_not_from_the_pool(servers):
    """``transport=`` with ``base_url`` (the README's way): a backend answers 302 to a CDN
    outside the pool; the client fetches the CDN, as plain httpx and the requests adapter
    (mounted on the virtual host) do, and the pool counts the one request it got."""
    a, b, cdn = servers("a"), servers("b"), servers("cdn")
    for backend in (a, b):
        backend.redirects = {"/img": f"{cdn.url}/cdn/img.png"}

    session = requests.Session()                    # the adapter, for comparison
    session.mount(f"{VHOST}/", lb.LoadBalancingAdapter([a.url, b.url]))
    assert session.get(f"{VHOST}/img").json()["server"] == "cdn"

    transport = LoadBalancingTransport([a.url, b.url])
    with httpx.Client(transport=transport, base_url=VHOST, follow_redirects=True) as client:
        response = client.get("/img")
    assert str(response.url) == f"{cdn.url}/cdn/img.png"
    assert response.json()["server"] == "cdn"
    assert (requests_of(transport), cdn.requests) == (1, 2)     # (the adapter's, this one)
    assert "lbmiddleware.backend" not in response.extensions     # not one of the pool's


def test_the_async_transport_sends_another_origins_request_there(servers):
    a, cdn = servers("a"), servers("cdn")
    a.redirects = {"/img": f"{cdn.url}/cdn/img.png"}

    async def scenario() -> dict:
        transport = AsyncLoadBalancingTransport([a.url])
        async with httpx.AsyncClient(transport=transport, base_url=VHOST,
                                     follow_redirects=True) as client:
            return (await client.get("/img")).json()

    echo = asyncio.run(scenario())
    assert (echo["server"], echo["path"]) == ("cdn", "/cdn/img.png")


def test_origin_names_the_virtual_host_whatever_comes_first(servers):
    """``origin=``: the first request may go elsewhere (another service, straight to the
    CDN) without the transport taking that for its virtual host."""
    a, other = servers("a"), servers("other")
    transport = LoadBalancingTransport([a.url], origin="HTTP://Svc:80")
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{other.url}/first").json()["server"] == "other"
        assert client.get(f"{VHOST}/x").json()["server"] == "a"
        assert client.get("http://svc:80/y").json()["server"] == "a"    # the same origin
        assert client.get(f"{other.url}/again").json()["server"] == "other"
    assert (a.requests, other.requests) == (2, 2)


def test_without_origin_the_first_requests_origin_is_the_virtual_one(servers):
    a, other = servers("a"), servers("other")
    transport = LoadBalancingTransport([a.url])
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{VHOST}/x").json()["server"] == "a"
        assert client.get(f"{other.url}/y").json()["server"] == "other"
        assert client.get(f"{VHOST}/z").json()["server"] == "a"
    assert transport.origin == VHOST


@pytest.mark.parametrize("origin", ["svc", "ftp://svc", "http://svc/base", "http://svc?x=1",
                                    "http://"])
def test_an_origin_that_is_not_one_is_refused_by_name(origin):
    with pytest.raises(lb.ConfigError, match="origin"):
        LoadBalancingTransport(["http://127.0.0.1:1"], origin=origin)


def test_a_backends_absolute_redirect_to_itself_stays_in_the_pool(servers):
    """A backend building absolute URLs from ``Host`` (Starlette's redirect_slashes, Django's
    build_absolute_uri) answers ``Location: http://127.0.0.1:PORT/new``; the transport maps
    it to the virtual origin, so the client follows it through the pool."""
    a, b = servers("a"), servers("b")
    a.redirects = {"/old": f"{a.url}/new"}
    b.redirects = {"/old": f"{b.url}/new"}
    transport = LoadBalancingTransport([a.url, b.url])
    with httpx.Client(mounts={VHOST: transport}, follow_redirects=True) as client:
        response = client.get(f"{VHOST}/old")
    assert response.json()["path"] == "/new"
    assert str(response.url) == f"{VHOST}/new"
    assert requests_of(transport) == 2


def test_the_base_path_query_and_server_name_are_mapped_and_other_locations_kept(servers):
    a = servers("a")
    a.redirects = {"/v1/base": f"{a.url}/v1/new?page=2#top",
                   "/v1/named": f"http://api.example:{a.port}/v1/named-new",
                   "/v1/outside": f"{a.url}/v2/elsewhere",
                   "/v1/relative": "/v1/rel",
                   "/v1/foreign": "https://cdn.example/x"}
    transport = LoadBalancingTransport([lb.Backend(f"{a.url}/v1", server_name="api.example")],
                                       origin="https://svc:8443")
    with httpx.Client(transport=transport) as client:
        def location(path: str) -> str:
            return client.get(f"https://svc:8443{path}").headers["Location"]

        assert location("/base") == "https://svc:8443/new?page=2#top"
        assert location("/named") == "https://svc:8443/named-new"     # its Host: the name
        assert location("/outside") == f"{a.url}/v2/elsewhere"        # not under the base
        assert location("/relative") == "/v1/rel"                     # (relative: as is)
        assert location("/foreign") == "https://cdn.example/x"
