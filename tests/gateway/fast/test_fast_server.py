"""The fast server's life (``gateway/fast/server.py``): the uvicorn options its upgrade
hand-off shares with the gateway under uvicorn, and what it gives back at its shutdown."""

from __future__ import annotations

import asyncio
import logging.config
import socket
from typing import Any

import pytest
import uvicorn

from lbmiddleware.gateway.fast.server import HandOff
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
    assert (served["ws"], served["ws_per_message_deflate"], served["proxy_headers"]) == (
        "websockets-sansio", False, False)
    assert (handed["lifespan"], served["lifespan"]) == ("off", "on")
