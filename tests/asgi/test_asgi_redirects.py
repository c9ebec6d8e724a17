"""Redirects from a real framework stay on the proxy (issue 14, item 4): a Starlette backend
under uvicorn builds absolute URLs from the ``Host`` it got (its slash redirects and
``url_for``), which the proxy sends as the backend's own address; through the ASGI middleware
and the gateway (under each of its servers) the client gets them on the address it used, and a
client that follows them stays on the proxy. (The rule for every proxy front-end is in
tests/contract/proxy_contract.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lbmiddleware.asgi import LoadBalancerMiddleware

from ..support.asgi_client import Call
from ..support.asgi_server import ServerThread
from ..support.gateway import GATEWAY_SERVERS, GatewayProcess


async def _items(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "host": request.headers["host"]})


async def _login(request: Request) -> Response:
    return RedirectResponse(request.url_for("items"), status_code=303)


def starlette_backend() -> Starlette:
    """/api/items/ answers; /api/items is Starlette's slash redirect (307), /api/login a
    redirect to url_for("items") (303): both absolute, on the Host the backend got."""
    return Starlette(routes=[Route("/api/items/", _items, name="items"),
                             Route("/api/login", _login)])


@pytest.fixture
def backend() -> Iterator[str]:
    with ServerThread(starlette_backend()) as server:
        yield f"http://127.0.0.1:{server.port}"


def test_the_middleware_gives_the_clients_address_back(backend):
    middleware = LoadBalancerMiddleware(None, backends=[backend], prefix="/api")

    async def location(path: str) -> tuple[int | None, str]:
        call = Call(middleware, "GET", path, host="front.example:8080", scheme="https")
        await call.run(timeout=10)
        return call.status, dict(call.headers)[b"location"].decode()

    async def both() -> list[tuple[int | None, str]]:
        try:
            return [await location("/api/items"), await location("/api/login")]
        finally:
            middleware.upstream.close()

    assert asyncio.run(both()) == [(307, "https://front.example:8080/api/items/"),
                                   (303, "https://front.example:8080/api/items/")]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_client_of_the_gateway_follows_them_through_the_gateway(backend, server):
    gateway = GatewayProcess({"LB_BACKENDS": backend, "LB_PREFIX": "/api",
                              "LB_SERVER": server}).start()
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        with requests.Session() as client:
            moved = client.get(f"{base}/api/items", allow_redirects=False, timeout=10)
            assert moved.status_code == 307
            assert moved.headers["Location"] == f"{base}/api/items/"
            followed = client.get(f"{base}/api/login", timeout=10)
    finally:
        gateway.stop()
    assert [r.status_code for r in followed.history] == [303]
    assert followed.url == f"{base}/api/items/"         # followed on the gateway
    assert followed.json() == {"path": "/api/items/", "host": backend.partition("//")[2]}
