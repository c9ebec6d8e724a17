"""The fast server's life (``gateway/fast/server.py``): the uvicorn options its upgrade
hand-off shares with the gateway under uvicorn, what it gives back at its shutdown, and its
banner's moment (uvicorn's)."""

from __future__ import annotations

import asyncio
import logging.config
import socket
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from lbmiddleware.gateway.app import GatewayApp, RoutesGatewayApp
from lbmiddleware.gateway.config import read_config
from lbmiddleware.gateway.fast import server as server_module
from lbmiddleware.gateway.fast.server import FastServer, HandOff
from lbmiddleware.gateway.fast.wire import DateHeader
from lbmiddleware.gateway.uvicorn_server import serve_uvicorn
from lbmiddleware.gateway_settings import load_settings

# What only one of the two uses of uvicorn sets: serve_uvicorn runs the lifespan, configures
# logging, picks the loop, serves TLS and bounds its shutdown; the hand-off does none of it
# (the fast server does). The app is each one's own object here. (With what load() makes of
# them: the app loaded, the lifespan's class.)
PER_USE = {"app", "loaded_app", "lifespan", "lifespan_class", "log_config", "loop",
           "ssl_certfile", "ssl_keyfile", "timeout_graceful_shutdown"}


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def served_config(settings: Any, monkeypatch: pytest.MonkeyPatch) -> uvicorn.Config:
    """The ``uvicorn.Config`` serve_uvicorn builds for ``settings``, loaded (its server not
    run)."""
    seen: list[uvicorn.Config] = []

    class Server:
        def __init__(self, config: uvicorn.Config) -> None:
            seen.append(config)

        async def serve(self, sockets: Any) -> None:
            pass

    monkeypatch.setattr(uvicorn, "Server", Server)
    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)
    with socket.socket() as sock:
        serve_uvicorn(settings, sock, None)
    [config] = seen
    config.load()       # (as its server would: the hand-off's is loaded)
    return config


@pytest.mark.parametrize("environ", [{}, {"LB_ACCESS_LOG": "true", "LB_LOG_LEVEL": "debug"}])
def test_the_hand_off_builds_uvicorn_as_the_gateway_under_uvicorn_does(environ, monkeypatch):
    """Every option but those of one use alone is the same in both, so a WebSocket handed
    off by the fast server behaves as under ``LB_SERVER=uvicorn``: the gateway's protocol
    (with its access log), websockets' sans-I/O WebSockets, 16 MiB messages, no
    permessage-deflate, no proxy headers."""
    settings = load_settings({"LB_BACKENDS": "http://127.0.0.1:9", **environ})
    served = vars(served_config(settings, monkeypatch))
    loop = asyncio.new_event_loop()
    try:
        handed = vars(HandOff(settings, no_app, set(), DateHeader(), loop).config)  # type: ignore[arg-type]
    finally:
        loop.close()
    shared = set(served) - PER_USE - {"http", "http_protocol_class"}
    assert {name: handed[name] for name in shared} == {name: served[name] for name in shared}
    # the protocol: a class of its own each time, built from the same settings
    for config in (served, handed):
        assert config["http_protocol_class"] is config["http"]
    assert handed["http"].__qualname__ == served["http"].__qualname__
    assert handed["http"].__mro__[1:] == served["http"].__mro__[1:]
    assert issubclass(served["ws"], WebSocketsSansIOProtocol)
    assert (served["ws_per_message_deflate"], served["proxy_headers"]) == (False, False)
    assert (handed["lifespan"], served["lifespan"]) == ("off", "on")


# -- the shutdown ------------------------------------------------------------------------


async def status_of(port: int, path: str) -> int:
    """The status of ``GET path`` on a connection of its own (closed after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


def serving(settings: Any, scenario: Any) -> Any:
    """``scenario(server, port)`` on a uvloop loop beside a :class:`FastServer` for
    ``settings`` on loopback (served before the scenario, stopped after it); its result."""

    async def main() -> Any:
        with socket.create_server(("127.0.0.1", 0)) as sock:
            server = FastServer(settings, sock, None, banner=lambda: None)
            task = asyncio.create_task(server.serve())
            try:
                return await scenario(server, sock.getsockname()[1])
            finally:
                server.stop()
                await asyncio.wait_for(task, 10)

    return uvloop.run(main())


def test_the_loop_gives_back_the_pool_it_owned_once_its_requests_ended(backends):
    """The exchanges pick through the pool's lane, the loop its owner; at the shutdown,
    once the last request ended and before the app is closed (so before the loop stops),
    the pool is given back: another thread's call takes its lock again, waiting for no
    loop."""
    settings = load_settings({"LB_BACKENDS": backends[0].url})
    seen: dict[str, Any] = {}

    async def scenario(server: FastServer, port: int) -> None:
        seen["status"] = await status_of(port, "/x")
        app = server.app
        assert isinstance(app, GatewayApp)
        pool = seen["pool"] = app.balancer
        seen["owned"] = pool.lane is not None
        app.on_close(lambda: seen.setdefault("at the app's close", pool.lane))

    serving(settings, scenario)
    pool = seen["pool"]
    assert (seen["status"], seen["owned"], seen["at the app's close"], pool.lane) == (
        200, True, None, None)
    assert [row["requests"] for row in pool.stats()] == [1]


def test_a_pool_a_reload_kept_is_given_back_though_its_new_route_had_no_request(
        backends, tmp_path):
    """The route's requests made the loop the pool's owner; a reload moved the route (its
    pool kept under a new middleware) and the old one closed, idle. No request came to the
    new route before the shutdown: the pool is given back all the same."""
    path = tmp_path / "gateway.toml"
    route = '[[route]]\nname = "orders"\nprefix = "{}"\nbackends = ["' + backends[0].url + '"]\n'
    path.write_text(route.format("/a"))
    seen: dict[str, Any] = {}

    async def scenario(server: FastServer, port: int) -> None:
        seen["status"] = await status_of(port, "/a/x")
        app = server.app
        assert isinstance(app, RoutesGatewayApp)
        pool = seen["pool"] = app.pools["orders"]
        seen["owned"] = pool.lane is not None
        path.write_text(route.format("/b"))
        seen["reloaded"] = await app.reload()
        seen["kept"] = app.pools["orders"] is pool

    serving(read_config(str(path)), scenario)
    assert (seen["status"], seen["owned"], seen["reloaded"], seen["kept"]) == (
        200, True, True, True)
    assert seen["pool"].lane is None


# -- the banner --------------------------------------------------------------------------


def slow_ready(monkeypatch: pytest.MonkeyPatch, answered: asyncio.Event,
               said: list[str]) -> None:
    """The server's app waits for ``answered`` before its sources' first answers are
    awaited (as a DNS source would keep it waiting); ``said``: "ready" once it is,
    "cancelled" if its wait was cut short."""
    make = server_module.make_app

    def make_app(*args: Any, **kwargs: Any) -> Any:
        app = make(*args, **kwargs)
        ready = app.ready

        async def slow() -> bool:
            try:
                await answered.wait()
            except asyncio.CancelledError:
                said.append("cancelled")
                raise
            done = await ready()
            said.append("ready")
            return done

        app.ready = slow
        return app

    monkeypatch.setattr(server_module, "make_app", make_app)


def test_the_banner_comes_before_the_sources_answer_and_a_request_waits_for_them(
        backends, monkeypatch):
    """As under uvicorn: the banner once the app is built, while the sources' first answers
    are awaited; a request sent after it waits in the listen backlog and is answered once
    they came."""
    said: list[str] = []

    async def main() -> None:
        answered = asyncio.Event()
        slow_ready(monkeypatch, answered, said)
        printed = asyncio.Event()

        def banner() -> None:
            said.append("banner")
            printed.set()

        settings = load_settings({"LB_BACKENDS": backends[0].url})
        with socket.create_server(("127.0.0.1", 0)) as sock:
            server = FastServer(settings, sock, None, banner)
            task = asyncio.create_task(server.serve())
            await printed.wait()
            # connected (the kernel's backlog took it) and sent before the sources answer
            reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            writer.write(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answered.set()
            said.append((await reader.read()).split(b"\r\n", 1)[0].decode())
            writer.close()
            server.stop()
            await asyncio.wait_for(task, 10)

    uvloop.run(main())
    assert said == ["banner", "ready", "HTTP/1.1 200 OK"]


def test_a_stop_while_the_sources_are_awaited_ends_the_wait(backends, monkeypatch):
    """SIGTERM after the banner, before the sources answered: the server stops at once
    (the app closed, no listener made) rather than after their 5 s."""
    said: list[str] = []

    async def main() -> Any:
        slow_ready(monkeypatch, asyncio.Event(), said)      # (never answered)
        printed = asyncio.Event()
        settings = load_settings({"LB_BACKENDS": backends[0].url})
        with socket.create_server(("127.0.0.1", 0)) as sock:
            server = FastServer(settings, sock, None, printed.set)
            task = asyncio.create_task(server.serve())
            await printed.wait()
            server.stop()
            await asyncio.wait_for(task, 10)
            return server.app

    app = uvloop.run(main())
    assert said == ["cancelled"]
    assert app.balancer.closed
