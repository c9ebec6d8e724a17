"""WebSockets through the gateway process (``python -m lbmiddleware serve``) under each of
its servers: granian or uvicorn terminates the client's WebSocket (the fast server hands an
upgrade request to uvicorn's protocol, so there it is uvicorn's) and the proxy re-frames it
to an echo backend (a client from the ``websockets`` package, real servers on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.waiting import until
from ..support.websocket_backend import SilentBackend, WebSocketBackend

MiB = 1024 * 1024


@pytest.fixture
def ws_backend():
    with WebSocketBackend("a", protocols=("chat.v2",)) as backend:
        yield backend


def gateway(server: str, backend: WebSocketBackend, **environ: str) -> GatewayProcess:
    return GatewayProcess({"LB_BACKENDS": backend.url, "LB_SERVER": server, **environ})


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_messages_subprotocols_and_close_codes_through_the_gateway(ws_backend, server):
    with gateway(server, ws_backend, LB_STICKY_COOKIE="lb", LB_ACCESS_LOG="true") as gw:
        url = f"ws://127.0.0.1:{gw.port}"

        async def scenario():
            async with connect(f"{url}/headers?x=1", subprotocols=["v1", "chat.v2"],
                               max_size=None) as ws:
                seen = json.loads(await ws.recv())
                chosen = ws.subprotocol
                cookies = ws.response.headers.get_all("set-cookie")
                for data in (b"\x00", "é" * 1000, os.urandom(MiB), os.urandom(16 * MiB)):
                    await ws.send(data)
                    assert await ws.recv() == data
            async with connect(f"{url}/close/1011") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                closed = ws.close_code, ws.close_reason
            return seen, chosen, cookies, closed

        seen, chosen, cookies, closed = asyncio.run(scenario())
        access = gw.wait_for_output(r"path=/headers .*status=101")
        errors = gw.stop()
    assert seen["path"] == "/headers" and seen["query"] == "x=1"
    assert seen["subprotocols"] == ["v1", "chat.v2"] and chosen == "chat.v2"
    # granian drops the headers of websocket.accept (2.8): no Set-Cookie on its 101
    assert len([c for c in cookies if c.startswith("lb=")]) == (server != "granian"), cookies
    assert closed == (1011, "bye")
    assert f"backend={ws_backend.url} attempts=1" in access
    assert ws_backend.wait_closed(2) == [1000, 1011]
    assert not re.search(r"Traceback|ERROR", errors), errors


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_backends_refusal_through_the_gateway(ws_backend, server):
    """Every server has the denial-response extension: the backend's 404 reaches the
    client with its body and headers."""
    with gateway(server, ws_backend) as gw:
        async def scenario():
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"ws://127.0.0.1:{gw.port}/deny/404")
            return caught.value.response

        response = asyncio.run(scenario())
    assert response.status_code == 404 and bytes(response.body) == b"denied 404"
    assert response.headers["x-backend"] == "a"


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_backends_redirect_to_itself_is_rewritten_through_the_gateway(ws_backend, server):
    """A refusal's Location pointing at the backend names the gateway instead (the
    ``websockets`` client would follow it: the handshake is read on a raw socket)."""
    with gateway(server, ws_backend) as gw:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /redirect HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket"
                         b"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                         b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         % gw.port)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, head
                head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert lines[0].split()[1] == "302"
    assert headers["location"] == f"http://127.0.0.1:{gw.port}/login"


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_client_gone_without_a_close_is_1001_upstream(ws_backend, server):
    """granian and uvicorn report a lost client as a close without a code (1005): the backend
    gets 1001 (going away), as for a client gone under uvicorn's other implementation."""
    with gateway(server, ws_backend) as gw:
        async def scenario():
            ws = await connect(f"ws://127.0.0.1:{gw.port}/echo")
            await ws.send("hi")
            assert await ws.recv() == "hi"
            ws.transport.abort()            # gone: no close frame, the connection reset
            with contextlib.suppress(Exception):
                await ws.close()

        asyncio.run(scenario())
        assert ws_backend.wait_closed(1) == [1001]


# Not granian: it gives the application no disconnect before its accept (see below).
@pytest.mark.parametrize("server", ["fast", "uvicorn"])
def test_a_client_gone_during_a_slow_upstream_handshake_cancels_it(server):
    """Contract "Client disconnects": the upstream handshake of a client that left is
    cancelled (the backend's connection closed) at once, not at the backend's answer or
    the read timeout; its access line says 499. (granian 2.x gives the application no
    disconnect before its accept: there the handshake runs to the backend's answer or
    the read timeout.)"""
    with SilentBackend() as backend, GatewayProcess({
            "LB_BACKENDS": backend.url, "LB_SERVER": server, "LB_READ_TIMEOUT": "60s",
            "LB_ACCESS_LOG": "true"}) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as client:
            client.sendall(b"GET /x HTTP/1.1\r\nHost: front\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                           b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            until(lambda: backend.heads, limit=10, what="the handshake upstream")
        until(lambda: backend.closed == 1, what="the upstream handshake cancelled")
        gw.wait_for_output(r"path=/x .*status=499")


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_the_clients_close_code_and_reason_reach_the_backend(ws_backend, server):
    """Under uvicorn the client's close reason reaches the backend with its code; granian
    (2.x) gives the application a websocket.disconnect without the reason, so under it
    the code passes and the reason is empty (documented in the contract)."""
    with gateway(server, ws_backend) as gw:
        async def scenario():
            async with connect(f"ws://127.0.0.1:{gw.port}/echo") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                await ws.close(4000, "bye")

        asyncio.run(scenario())
        assert ws_backend.wait_closed(1) == [4000]
    assert ws_backend.reasons == ["" if server == "granian" else "bye"]
