"""The middleware in a Starlette app, added the way the README shows."""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

import lbmiddleware as lb


def make_app(started: list) -> Starlette:
    async def local(request):
        return PlainTextResponse("local")

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        started.append("startup")
        yield
        started.append("shutdown")

    return Starlette(routes=[Route("/local", local), WebSocketRoute("/ws", echo)],
                     lifespan=lifespan)


def test_add_middleware_with_keyword_arguments(backends):
    started: list = []
    app = make_app(started)
    app.add_middleware(lb.LoadBalancerMiddleware, prefix="/api",
                       backends=[b.url for b in backends], policy="ip_hash",
                       trusted_proxies=["10.0.0.0/8"])
    with TestClient(app, client=("10.0.0.1", 5000)) as client:
        assert started == ["startup"]
        assert client.get("/local").text == "local"
        first = client.get("/api/users", headers={"X-Forwarded-For": "198.51.100.20"}).json()
        again = client.get("/api/users", headers={"X-Forwarded-For": "198.51.100.20"}).json()
        assert first["server"] == again["server"]
        expected = lb.Balancer([b.url for b in backends], policy="ip_hash").lookup("198.51.100.20")
        assert f"http://127.0.0.1:{backends['abc'.index(first['server'])].port}" == expected.url
        assert first["headers"]["X-Forwarded-For"] == "198.51.100.20, 10.0.0.1"
        with client.websocket_connect("/ws") as websocket:      # websockets pass through
            websocket.send_text("ping")
            assert websocket.receive_text() == "ping"
        response = client.post("/api/items", content=b"payload")
        assert response.json()["body"] == "payload"
    assert started == ["startup", "shutdown"]


def test_add_middleware_with_everything_from_lb_variables(backends, monkeypatch):
    monkeypatch.setenv("LB_BACKENDS", f"{backends[0].url}, {backends[1].url}")
    monkeypatch.setenv("LB_PREFIX", "/api")
    monkeypatch.setenv("LB_STRIP_PREFIX", "1")
    app = make_app([])
    app.add_middleware(lb.LoadBalancerMiddleware)
    with TestClient(app) as client:
        seen = [client.get("/api/x").json() for _ in range(2)]
        assert [s["server"] for s in seen] == ["a", "b"]
        assert seen[0]["path"] == "/x"
        assert client.get("/local").text == "local"


def readme_block(containing: str) -> str:
    """The README's Python block that contains ``containing``."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if containing in b]
    return block


def test_the_readmes_own_pool_example_reaches_the_pool_and_closes_it(backends):
    # The README's example as it is, its source swapped for the test's backends.
    code = readme_block('Route("/members", members)').replace(
        '["dns+http://orders.internal:8080"]', repr([b.url for b in backends]))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app, pool = namespace["app"], namespace["pool"]
    with TestClient(app) as client:
        assert client.get("/members").json() == [b.url for b in backends]
        assert client.get("/api/users").json()["server"] in "abc"
        pool.drain(backends[0].url)                 # the middleware's pool is this one
        assert client.get("/members").json() == [b.url for b in backends[1:]]
        assert all(client.get("/api/x").json()["server"] != "a" for _ in range(6))
        assert not pool._background._stopped
    assert pool._background._stopped                # its health checks stopped by aclose()
