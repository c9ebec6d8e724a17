"""WebSockets are not proxied: an upgrade is refused with 501, never downgraded to a GET.

An HTTP request asking for ``Upgrade: websocket`` (servers with WebSockets off, like the
gateway) and a ``websocket`` scope under the prefix (servers with WebSockets on) are both
refused; the backend never sees them. Other upgrade tokens (``h2c``) are declined as nginx
does: ``Upgrade`` is hop-by-hop and the request goes upstream as a plain request.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.proxy import BINARY, TEXT, NotProxied, UnsafeRequest

from ..support.asgi_client import Call
from ..support.gateway import GatewayProcess

HANDSHAKE = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
REFUSAL = b"501 Not Implemented: WebSockets are not proxied\n"


@pytest.mark.parametrize("upgrade, connection", [
    ("websocket", "Upgrade"), ("WebSocket", "keep-alive, upgrade"), ("h2c, websocket", "Upgrade")])
def test_a_websocket_upgrade_is_not_proxied(upgrade, connection):
    received = [("Host", "front"), ("Upgrade", upgrade), ("Connection", connection)]
    with pytest.raises(NotProxied, match="WebSockets are not proxied") as caught:
        TEXT.request_headers(received, peer=None, scheme="http")
    assert caught.value.status == 501 and UnsafeRequest.status == 400
    with pytest.raises(NotProxied):
        BINARY.request_headers([(n.encode(), v.encode()) for n, v in received],
                               peer=None, scheme="http")


@pytest.mark.parametrize("headers", [
    [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"), ("HTTP2-Settings", "AAMAAABk")],
    [("Upgrade", "websocket")],                     # no Connection: upgrade: not an upgrade
    [("Connection", "upgrade")]])
def test_other_upgrades_go_upstream_as_plain_requests(headers):
    out = TEXT.request_headers([("Host", "front")] + headers, peer=None, scheme="http")
    assert not {n.lower() for n, _ in out} & {"upgrade", "connection", "http2-settings"}


def test_an_http_upgrade_request_gets_501_and_the_backend_nothing(backends):
    a = backends[0]
    mw = LoadBalancerMiddleware(backends=[a.url])
    response = asyncio.run(Call(mw, "GET", "/chat", headers=HANDSHAKE).run())
    assert response.status == 501 and response.body == REFUSAL
    plain = asyncio.run(Call(mw, "GET", "/x", headers=[("Upgrade", "h2c"),
                                                      ("Connection", "Upgrade")]).run())
    assert plain.status == 200 and "Upgrade" not in plain.json()["headers"]
    assert a.requests == 1


async def ws_app(scope, receive, send):
    """The wrapped application: accepts every websocket."""
    await send({"type": "websocket.accept"})


async def websocket(mw, path: str, extensions: dict | None = None) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(n.lower().encode(), v.encode()) for n, v in HANDSHAKE],
             "client": ("127.0.0.1", 5000)}
    if extensions is not None:
        scope["extensions"] = extensions
    await mw(scope, receive, send)
    return sent


def test_a_websocket_scope_under_the_prefix_is_refused_and_others_reach_the_app(backends):
    a = backends[0]
    mw = LoadBalancerMiddleware(ws_app, backends=[a.url], prefix="/api")
    gateway = LoadBalancerMiddleware(backends=[a.url])
    denial = {"websocket.http.response": {}}

    async def scenario():
        return (await websocket(mw, "/ws"), await websocket(mw, "/api/ws"),
                await websocket(mw, "/api/ws", denial), await websocket(gateway, "/ws", denial))

    outside, closed, denied, gateway_denied = asyncio.run(scenario())
    assert outside == [{"type": "websocket.accept"}]
    assert [m["type"] for m in closed] == ["websocket.close"]
    assert closed[0]["reason"] == "WebSockets are not proxied"
    assert denied[0]["type"] == "websocket.http.response.start" and denied[0]["status"] == 501
    assert denied[1] == {"type": "websocket.http.response.body", "body": REFUSAL,
                         "more_body": False}
    assert gateway_denied == denied
    assert a.requests == 0


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_the_gateway_answers_a_websocket_handshake_with_501(backends, server):
    a = backends[0]
    handshake = b"GET /chat HTTP/1.1\r\nHost: gw\r\n" + b"".join(
        b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in HANDSHAKE) + b"\r\n"
    with GatewayProcess({"LB_BACKENDS": a.url, "LB_SERVER": server}) as gateway:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(handshake)
            answer = b""
            while not answer.endswith(REFUSAL):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 501 "), answer
    assert answer.endswith(REFUSAL)
    assert a.requests == 0
