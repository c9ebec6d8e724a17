"""WebSockets through the ASGI middleware: real servers on loopback (the middleware under
uvicorn with WebSockets on, echo backends under uvicorn, a client from the ``websockets``
package), plus the rules in-process.

Under the prefix a ``websocket`` scope is proxied: the handshake's attempts before the
client is answered (retried on another backend), then messages both ways, close codes both
ways, the pick in flight until the close. A handshake that arrives as an HTTP request (a
server with WebSockets off) cannot be upgraded through ASGI's ``http`` scope: 501, never a
downgrade to a plain GET. Other upgrade tokens (``h2c``) are declined as nginx does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.core.sticky import sticky_value
from lbmiddleware.proxy import BINARY, TEXT, NotProxied, UnsafeRequest
from lbmiddleware.upstream.websocket import (
    BINARY as OP_BINARY,
)
from lbmiddleware.upstream.websocket import (
    CLOSE,
    PING,
    PONG,
    FrameError,
    FrameParser,
    WebSocket,
    close_payload,
    frame,
    mask,
)
from lbmiddleware.upstream.websocket import (
    TEXT as OP_TEXT,
)

from ..support.asgi_client import Call
from ..support.raw_backends import CLOSE as CLOSE_STEP
from ..support.servers import refused_url
from ..support.tls import make_pki
from ..support.waiting import until
from ..support.websocket_backend import (
    SilentBackend,
    WebSocketBackend,
    WebSocketServer,
    raise_fd_limit,
)

HANDSHAKE = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
REFUSAL = b"501 Not Implemented: WebSockets are not proxied\n"
MiB = 1024 * 1024


@pytest.fixture
def ws_backends():
    """Starts echo WebSocket backends by name (``ws_backends("a", protocols=...)``)."""
    started: list[WebSocketBackend] = []

    def start(name: str, **options) -> WebSocketBackend:
        started.append(WebSocketBackend(name, **options).start())
        return started[-1]

    yield start
    for backend in started:
        backend.stop()


def in_flight(mw) -> dict[str, int]:
    return {row["url"]: row["in_flight"] for row in mw.balancer.stats()}


def served(mw, **options):
    options.setdefault("max_fails", 100)
    return WebSocketServer(LoadBalancerMiddleware(**options)) if mw is None else \
        WebSocketServer(mw)


# -- the header rules (HTTP) ----------------------------------------------------------------

@pytest.mark.parametrize("upgrade, connection", [
    ("websocket", "Upgrade"), ("WebSocket", "keep-alive, upgrade"), ("h2c, websocket", "Upgrade")])
def test_a_websocket_upgrade_over_http_is_not_proxied(upgrade, connection):
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


def test_a_handshake_in_an_http_scope_gets_501_and_the_backend_nothing(backends):
    """A server with WebSockets off hands the handshake over as HTTP: it cannot be
    upgraded through the ``http`` scope, so it is refused, never sent as a plain GET."""
    a = backends[0]
    mw = LoadBalancerMiddleware(backends=[a.url])
    response = asyncio.run(Call(mw, "GET", "/chat", headers=HANDSHAKE).run())
    assert response.status == 501 and response.body == REFUSAL
    plain = asyncio.run(Call(mw, "GET", "/x", headers=[("Upgrade", "h2c"),
                                                      ("Connection", "Upgrade")]).run())
    assert plain.status == 200 and "Upgrade" not in plain.json()["headers"]
    assert a.requests == 1


# -- the scope in-process ---------------------------------------------------------------------

async def ws_app(scope, receive, send):
    """The wrapped application: accepts every websocket."""
    await send({"type": "websocket.accept"})


async def websocket(mw, path: str, extensions: dict | None = None) -> list[dict]:
    """A ``websocket`` scope through ``mw`` in-process; the messages it sent."""
    sent: list[dict] = []
    incoming = iter([{"type": "websocket.connect"}])

    async def receive():
        return next(incoming, {"type": "websocket.disconnect", "code": 1005})

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(n.lower().encode(), v.encode()) for n, v in HANDSHAKE],
             "client": ("127.0.0.1", 5000), "scheme": "ws", "subprotocols": []}
    if extensions is not None:
        scope["extensions"] = extensions
    await mw(scope, receive, send)
    return sent


def test_outside_the_prefix_a_websocket_is_the_apps_and_without_an_app_404(ws_backends):
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(ws_app, backends=[a.url], prefix="/api")
    gateway = LoadBalancerMiddleware(backends=[a.url], prefix="/api")
    denial = {"websocket.http.response": {}}

    async def scenario():
        return (await websocket(mw, "/ws"), await websocket(gateway, "/ws", denial),
                await websocket(gateway, "/ws"))

    outside, denied, closed = asyncio.run(scenario())
    assert outside == [{"type": "websocket.accept"}]
    assert denied[0]["type"] == "websocket.http.response.start" and denied[0]["status"] == 404
    assert denied[1]["body"] == b"404 Not Found: no route for this path\n"
    assert closed == [{"type": "websocket.close", "code": 1008,
                       "reason": "404 Not Found: no route for this path"}]
    assert a.accepted == 0


def test_a_backends_redirect_to_itself_is_rewritten_on_a_refusal_and_an_accept(ws_backends):
    """The response rules' redirect rewrite (contract "Responses"): a refusal's Location,
    Content-Location and Refresh pointing at the backend, and a 101's Content-Location,
    name the client's origin instead (the path after the backend's base path kept)."""
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(backends=[a.url])

    async def scenario(path):
        sent: list[dict] = []
        incoming = [{"type": "websocket.connect"}]
        accepted = asyncio.Event()

        async def receive():
            if incoming:
                return incoming.pop()
            await accepted.wait()
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message):
            sent.append(message)
            accepted.set()

        scope = {"type": "websocket", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "client": ("127.0.0.1", 5000), "scheme": "wss",
                 "headers": [(b"host", b"front.example")]
                 + [(n.lower().encode(), v.encode()) for n, v in HANDSHAKE],
                 "subprotocols": [], "extensions": {"websocket.http.response": {}}}
        await asyncio.wait_for(mw(scope, receive, send), 10)
        return sent

    refused = asyncio.run(scenario("/redirect"))
    accepted = asyncio.run(scenario("/located"))
    assert refused[0]["status"] == 302
    headers = dict(refused[0]["headers"])
    assert headers[b"location"] == b"https://front.example/login"
    assert headers[b"content-location"] == b"https://front.example/login"
    assert headers[b"refresh"] == b"0; url=https://front.example/login"
    assert accepted[0]["type"] == "websocket.accept"
    assert dict(accepted[0]["headers"])[b"content-location"] == b"https://front.example/here"


def test_without_the_denial_extension_an_answer_is_a_close_before_the_handshake(backends):
    """A plain HTTP backend answers the upgrade 200; an empty pool is the proxy's 503.
    Where the server cannot send a response the socket is closed before its handshake
    (the server answers 403): 1008 for a backend's answer, 1011 for a failure."""
    a = backends[0]
    mw = LoadBalancerMiddleware(backends=[a.url])
    empty = LoadBalancerMiddleware(backends=[a.url])
    empty.balancer.update([])
    denial = {"websocket.http.response": {}}

    async def scenario():
        return (await websocket(mw, "/chat"), await websocket(mw, "/chat", denial),
                await websocket(empty, "/chat"))

    closed, denied, unavailable = asyncio.run(scenario())
    assert closed == [{"type": "websocket.close", "code": 1008,
                       "reason": "the backend answered 200 OK"}]
    assert denied[0]["status"] == 200 and json.loads(denied[1]["body"])["headers"][
        "Sec-WebSocket-Version"] == "13"
    assert unavailable == [{"type": "websocket.close", "code": 1011,
                            "reason": "503 Service Unavailable: no backend is available"}]


# -- through a real server --------------------------------------------------------------------

SIZES = [1, 125, 126, 65535, 65536, MiB, 16 * MiB]


def test_messages_of_1_byte_to_16_mib_text_and_binary_go_both_ways(ws_backends):
    a = ws_backends("a")
    with served(None, backends=[a.url]) as server:
        async def scenario():
            async with connect(f"{server.url}/echo", max_size=None) as ws:
                for size in SIZES:
                    data = os.urandom(size)
                    await ws.send(data)
                    assert await ws.recv() == data, size
                    text = ("é" * size)[: max(1, size // 2)]      # 2 bytes a character
                    await ws.send(text)
                    assert await ws.recv() == text, size

        asyncio.run(scenario())
    assert a.wait_closed(1) == [1000]


def test_the_handshake_follows_the_proxy_rules(ws_backends):
    """Host is the backend's, X-Forwarded-* are set, hop-by-hop headers and those Connection
    names are dropped, the key and version are the upstream client's own, the path and
    query go as sent (the prefix stripped with strip_prefix)."""
    a = ws_backends("a")
    with served(None, backends=[a.url], prefix="/api", strip_prefix=True) as server:
        async def scenario():
            async with connect(f"{server.url}/api/headers?room=1", additional_headers={
                    "X-Kept": "yes", "X-Hop": "secret", "Connection": "Upgrade, X-Hop",
                    "Keep-Alive": "300"}) as ws:
                return json.loads(await ws.recv()), ws.request.headers["Sec-WebSocket-Key"]

        seen, client_key = asyncio.run(scenario())
    headers = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    assert seen["path"] == "/headers" and seen["query"] == "room=1"
    assert headers["host"] == [a.url.removeprefix("http://")]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{server.port}"]
    assert headers["x-kept"] == ["yes"]
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers["upgrade"] == ["websocket"] and headers["sec-websocket-version"] == ["13"]
    assert headers["sec-websocket-key"] != [client_key]
    assert "sec-websocket-extensions" not in headers      # none offered upstream


@pytest.mark.parametrize("offered, supported, chosen", [
    (["x", "chat.v2"], ("chat.v2", "chat.v1"), "chat.v2"),
    (["x", "y"], ("chat.v2",), None),
    ([], ("chat.v2",), None)])
def test_subprotocols_are_offered_upstream_and_the_backends_choice_accepted(
        ws_backends, offered, supported, chosen):
    a = ws_backends("a", protocols=supported)
    with served(None, backends=[a.url]) as server:
        async def scenario():
            async with connect(f"{server.url}/headers", subprotocols=offered or None) as ws:
                return ws.subprotocol, json.loads(await ws.recv())["subprotocols"]

        subprotocol, seen = asyncio.run(scenario())
    assert subprotocol == chosen and seen == offered


@pytest.mark.parametrize("code", [1011, 1001, 4001])
def test_a_backends_close_code_and_reason_reach_the_client(ws_backends, code):
    a = ws_backends("a")
    with served(None, backends=[a.url]) as server:
        async def scenario():
            async with connect(f"{server.url}/close/{code}") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code, ws.close_reason

        assert asyncio.run(scenario()) == (code, "bye")


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_a_clients_close_code_reaches_the_backend_and_the_pick_is_released(ws_backends, code):
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(backends=[a.url], policy="least_conn")
    with served(mw) as server:
        async def scenario():
            async with connect(f"{server.url}/echo") as ws:
                await ws.send("x")
                await ws.recv()
                open_now = in_flight(mw)[a.url]
                await ws.close(code)
            return open_now

        assert asyncio.run(scenario()) == 1      # in flight while the socket is open
        assert a.wait_closed(1) == [code]
        until(lambda: in_flight(mw)[a.url] == 0, what="the pick released")
    stats = mw.balancer.stats()[0]
    assert stats["requests"] == 1 and stats["failures"] == 0
    assert stats["bytes_sent"] == 1 and stats["bytes_received"] == 1


@pytest.mark.parametrize("implementation", ["websockets", "websockets-sansio"])
def test_a_client_that_vanishes_closes_the_upstream_and_releases_the_pick(
        ws_backends, implementation):
    """A client gone without a close (1006) closes the upstream with 1001 (going away).
    uvicorn's sans-I/O implementation (and granian) report a lost client as a close
    without a code (1005), which is taken the same way: 1001 upstream."""
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(backends=[a.url])
    with WebSocketServer(mw, ws=implementation) as server:
        async def scenario():
            ws = await connect(f"{server.url}/echo")
            await ws.send(b"x")
            await ws.recv()
            ws.transport.abort()         # gone: no close frame, the TCP connection reset
            with contextlib.suppress(Exception):
                await ws.close()

        asyncio.run(scenario())
        assert a.wait_closed(1) == [1001]
        until(lambda: in_flight(mw)[a.url] == 0, what="the pick released")
    assert mw.balancer.stats()[0]["failures"] == 0


@pytest.mark.parametrize("implementation", ["websockets", "websockets-sansio"])
def test_a_client_gone_during_a_slow_upstream_handshake_releases_the_pick(
        implementation, access_log):
    """Contract "Client disconnects": a client that leaves while the backend has not
    answered the handshake cancels it (the backend's connection closed) and the pick is
    released then, not at the backend's answer or the read timeout; its access line says
    499."""
    with SilentBackend() as backend:
        mw = LoadBalancerMiddleware(backends=[backend.url], read_timeout=60, max_fails=100,
                                    policy="least_conn", access_log=True)
        with WebSocketServer(mw, ws=implementation) as server:
            _leave_during_the_handshake(mw, backend, server.port, access_log)
    assert "status=499" in access_log.records[0].getMessage()
    assert mw.balancer.stats()[0]["failures"] == 0


def _leave_during_the_handshake(mw, backend: SilentBackend, port: int, access_log) -> None:
    """A client sends its handshake to ``port`` and leaves once ``backend`` has it: the
    upstream connection is closed and the pick released, the access line written."""
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET /x HTTP/1.1\r\nHost: front\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
                   b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    until(lambda: backend.heads, what="the handshake upstream")
    assert in_flight(mw)[backend.url] == 1
    client.close()
    until(lambda: backend.closed == 1, what="the upstream handshake cancelled")
    until(lambda: in_flight(mw)[backend.url] == 0, what="the pick released")
    until(lambda: access_log.records, what="the access line")


def test_least_conn_sees_open_websockets(ws_backends):
    a, b = ws_backends("a"), ws_backends("b")
    mw = LoadBalancerMiddleware(backends=[a.url, b.url], policy="least_conn")
    with served(mw) as server:
        async def scenario():
            sockets = [await connect(f"{server.url}/name") for _ in range(6)]
            names = [await ws.recv() for ws in sockets]
            counts = in_flight(mw)
            for ws in sockets:
                await ws.close()
            return names, counts

        names, counts = asyncio.run(scenario())
        until(lambda: set(in_flight(mw).values()) == {0}, what="every pick released")
    assert sorted(names) == ["a"] * 3 + ["b"] * 3
    assert counts == {a.url: 3, b.url: 3}


def test_a_backends_refusal_reaches_the_client_with_its_status_and_body(ws_backends):
    a = ws_backends("a")
    with served(None, backends=[a.url], sticky_cookie="lb") as server:
        async def scenario():
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"{server.url}/deny/403")
            return caught.value.response

        response = asyncio.run(scenario())
    assert response.status_code == 403 and bytes(response.body) == b"denied 403"
    assert response.headers["x-backend"] == "a"
    assert response.headers["set-cookie"].startswith("lb=")       # a backend's answer


@pytest.mark.parametrize("first", ["refused", "closed during the handshake", "503"])
def test_a_failed_handshake_is_retried_on_another_backend(ws_backends, scripted, first):
    """A refused connect, a backend killed while it reads the handshake (the connection
    closed without an answer) and a 503 each fail the attempt, tried again elsewhere
    before the client is answered."""
    b = ws_backends("b")
    if first == "refused":
        url = refused_url()
    else:
        step = CLOSE_STEP if first == "closed during the handshake" else \
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        url = scripted([step]).url
    mw = LoadBalancerMiddleware(backends=[url, b.url], policy="round_robin", retries=1,
                                max_fails=100, access_log=True)
    with served(mw) as server:
        async def scenario():
            async with connect(f"{server.url}/name") as ws:
                return await ws.recv()

        assert asyncio.run(scenario()) == "b"
        until(lambda: set(in_flight(mw).values()) == {0}, what="every pick released")
    stats = {row["url"]: row for row in mw.balancer.stats()}
    assert stats[url]["failures"] == 1 and stats[b.url]["failures"] == 0


@pytest.mark.parametrize("mutual, words", [
    (False, "TLS: certificate verify failed: unable to get local issuer certificate"),
    (True, "TLS: tlsv13 alert certificate required")])
def test_a_wss_backends_tls_failure_is_named_in_words(
        ws_backends, raw_backend, tmp_path, caplog, mutual, words):
    """Contract "https backends": a certificate problem fails the attempt as a connect
    failure in TLS's words, as an HTTP request's does: our CA does not know the backend's
    certificate (the connect fails), or (TLS 1.3) the backend's verdict on the client
    certificate we lack comes as an alert after our side of the handshake ended (a raw
    backend on a blocking ssl socket: an asyncio server drops the connection without the
    alert, which leaves nothing but "the backend closed the connection" to say)."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    pki = make_pki(tmp_path)
    if mutual:
        url = raw_backend(tls=pki.server_context(client_certificate=True)).url
    else:
        url = ws_backends("a", pki=pki).url
    with served(None, backends=[url], backend_ca=pki.ca if mutual else None,
                retries=0) as server:
        async def scenario():
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"{server.url}/name")
            return caught.value.response.status_code

        assert asyncio.run(scenario()) == 502
    lines = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    assert len(lines) == 1 and f"failed: {words};" in lines[0], lines


def test_a_wss_backend_with_a_trusted_certificate_echoes(ws_backends, tmp_path):
    pki = make_pki(tmp_path)
    a = ws_backends("a", pki=pki)
    with served(None, backends=[a.url], backend_ca=pki.ca) as server:
        async def scenario():
            async with connect(f"{server.url}/name") as ws:
                await ws.send("hi")
                return await ws.recv(), await ws.recv()

        assert asyncio.run(scenario()) == ("a", "hi")

def test_when_every_handshake_fails_the_client_gets_502(scripted):
    url = scripted([CLOSE_STEP]).url
    with served(None, backends=[url, refused_url()], retries=1) as server:
        async def scenario():
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"{server.url}/x")
            return caught.value.response

        response = asyncio.run(scenario())
    assert response.status_code == 502
    assert bytes(response.body) == b"502 Bad Gateway: no backend gave a response\n"


def test_the_sticky_cookie_keeps_a_client_on_its_backend(ws_backends):
    """The accept carries the sticky cookie (Path = the prefix) beside the backend's own
    Set-Cookie; a client sending it back stays on that backend under round_robin, and gets
    no new cookie."""
    a, b = ws_backends("a"), ws_backends("b")
    with served(None, backends=[a.url, b.url], policy="round_robin",
                sticky_cookie="lb", prefix="/chat", strip_prefix=True) as server:
        async def scenario():
            async with connect(f"{server.url}/chat/cookie") as ws:
                cookies = ws.response.headers.get_all("set-cookie")
            pinned = next(c for c in cookies if c.startswith("lb="))
            names = []
            for _ in range(4):
                async with connect(f"{server.url}/chat/name",
                                   additional_headers={"Cookie": pinned.split(";")[0]}) as ws:
                    names.append(await ws.recv())
                    assert ws.response.headers.get_all("set-cookie") == []
            return cookies, pinned, names

        cookies, pinned, names = asyncio.run(scenario())
    owner = next(c for c in cookies if c.startswith("backend=")).removeprefix("backend=")
    assert pinned.endswith("; Path=/chat; HttpOnly; SameSite=Lax")
    assert names == [owner] * 4


@pytest.mark.parametrize("peer, scheme, proto, secure", [
    ("127.0.0.1", "ws", "https", True),         # a TLS terminator in front, trusted
    ("127.0.0.1", "wss", "http", False),        # its word wins both ways
    ("127.0.0.1", "ws", None, False),
    ("127.0.0.1", "wss", None, True),
    ("127.0.0.2", "ws", "https", False),        # anyone else's word is ignored
    ("127.0.0.2", "wss", None, True)])
def test_the_sticky_cookie_is_secure_when_the_clients_scheme_is_https(
        ws_backends, peer, scheme, proto, secure):
    """The client's scheme is the HTTP rule's (proxy/client.py client_scheme): a trusted
    proxy's X-Forwarded-Proto, else the connection's (wss): the cookie on the accept is
    Secure for https, and the backend is told the same scheme. In-process: uvicorn would
    read X-Forwarded-Proto itself from 127.0.0.1."""
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(backends=[a.url], sticky_cookie="lb",
                                trusted_proxies=["127.0.0.1"])
    headers = [(n.lower().encode(), v.encode()) for n, v in HANDSHAKE]
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto.encode()))

    async def scenario():
        sent: list[dict] = []
        relayed = asyncio.Event()
        incoming = [{"type": "websocket.connect"}]

        async def receive():
            if incoming:
                return incoming.pop()
            await relayed.wait()            # the backend's first message came through
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message):
            sent.append(message)
            if message["type"] == "websocket.send":
                relayed.set()

        scope = {"type": "websocket", "path": "/headers", "raw_path": b"/headers",
                 "query_string": b"", "headers": headers, "client": (peer, 5000),
                 "scheme": scheme, "subprotocols": []}
        await asyncio.wait_for(mw(scope, receive, send), 10)
        return sent

    sent = asyncio.run(scenario())
    accept = sent[0]
    assert accept["type"] == "websocket.accept"
    assert accept["headers"] == [(b"set-cookie", (
        f"lb={sticky_value(a.url)}; Path=/; HttpOnly; SameSite=Lax"
        + ("; Secure" if secure else "")).encode())]
    seen = dict(json.loads(sent[1]["text"])["headers"])
    told = proto if proto is not None and peer == "127.0.0.1" else \
        ("https" if scheme == "wss" else "http")
    assert seen["x-forwarded-proto"] == told


def test_the_access_log_has_a_line_per_websocket_at_its_close(ws_backends, access_log):
    a = ws_backends("a")
    with served(None, backends=[a.url], access_log=True) as server:
        async def scenario():
            async with connect(f"{server.url}/echo?secret=1") as ws:
                await ws.send("x")
                await ws.recv()

        asyncio.run(scenario())
        until(lambda: access_log.records, what="the access line")
    line = access_log.records[0].getMessage()
    fields = dict(part.split("=", 1) for part in line.split())
    assert fields["method"] == "GET" and fields["path"] == "/echo"
    assert fields["status"] == "101" and fields["backend"] == a.url
    assert fields["attempts"] == "1" and float(fields["duration_ms"]) > 0


def test_a_thousand_concurrent_websockets(ws_backends):
    """1,000 sockets open at once through one middleware, each echoing a message, then
    closed: every one reached the backend and every pick was released."""
    raise_fd_limit(8192)
    a = ws_backends("a")
    mw = LoadBalancerMiddleware(backends=[a.url])
    count = 1000
    with served(mw) as server:
        async def scenario():
            gate = asyncio.Semaphore(100)           # connects at a time (the listen backlog)

            async def open_one(number):
                async with gate:
                    ws = await connect(f"{server.url}/echo", open_timeout=30)
                await ws.send(f"hello {number}")
                return ws, await ws.recv()

            opened = await asyncio.gather(*(open_one(n) for n in range(count)))
            held = in_flight(mw)[a.url]
            await asyncio.gather(*(ws.close() for ws, _ in opened))
            return [answer for _, answer in opened], held

        answers, held = asyncio.run(asyncio.wait_for(scenario(), 100))
        assert answers == [f"hello {n}" for n in range(count)]
        assert held == count
        assert a.wait_closed(count, timeout=30) == [1000] * count
        until(lambda: in_flight(mw)[a.url] == 0, limit=10, what="every pick released")
    assert a.accepted == count


def test_a_backend_breaking_the_protocol_closes_the_client_with_1011():
    """A 101 then a masked frame (a server's never are): the client gets 1011, the backend
    a failure (the socket broke off after its client was answered: never retried)."""
    backend = _BrokenWebSocketBackend()
    try:
        mw = LoadBalancerMiddleware(backends=[backend.url], max_fails=100)
        with served(mw) as server:
            async def scenario():
                async with connect(f"{server.url}/x") as ws:
                    with pytest.raises(ConnectionClosed):
                        await ws.recv()
                    return ws.close_code

            assert asyncio.run(scenario()) == 1011
            until(lambda: mw.balancer.stats()[0]["failures"] == 1, what="the failure")
        assert mw.balancer.stats()[0]["in_flight"] == 0
    finally:
        backend.stop()


class _BrokenWebSocketBackend:
    """Accepts the handshake properly, then sends a masked frame."""

    def __init__(self) -> None:
        import base64
        import hashlib
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

        def serve():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:"))
                accept = base64.b64encode(hashlib.sha1(
                    key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n" + frame(OP_TEXT, b"masked"))
                conn.recv(4096)

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


# -- the frames (sans I/O) ----------------------------------------------------------------

def server_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """A frame as a server sends it: unmasked."""
    size = len(payload)
    first = (0x80 if final else 0) | opcode
    if size < 126:
        return bytes([first, size]) + payload
    if size < 65536:
        return bytes([first, 126]) + size.to_bytes(2, "big") + payload
    return bytes([first, 127]) + size.to_bytes(8, "big") + payload


def test_mask_is_its_own_inverse_and_xors_the_key_repeated():
    key = b"\x01\x02\x03\x04"
    assert mask(b"\x00" * 6, key) == b"\x01\x02\x03\x04\x01\x02"
    data = os.urandom(100_003)
    assert mask(mask(data, key), key) == data and mask(b"", key) == b""


def test_frames_are_masked_with_their_length_in_the_right_form():
    key = b"abcd"
    for size, head in ((5, b"\x82\x85"), (126, b"\x82\xfe\x00\x7e"),
                       (65536, b"\x82\xff" + (65536).to_bytes(8, "big"))):
        payload = os.urandom(size)
        data = frame(OP_BINARY, payload, key)
        assert data.startswith(head + key) and mask(data[len(head) + 4:], key) == payload


def test_the_parser_joins_fragments_and_passes_control_frames_between_them():
    parser = FrameParser()
    data = (server_frame(OP_TEXT, b"hel", final=False) + server_frame(PING, b"p")
            + server_frame(0, b"lo", final=False) + server_frame(0, b"!"))
    out = []
    for byte in range(len(data)):               # one byte at a time
        out += parser.feed(data[byte:byte + 1])
    assert out == [(PING, b"p"), (OP_TEXT, b"hello!")]
    big = os.urandom(70000)
    assert parser.feed(server_frame(OP_BINARY, big) + server_frame(CLOSE, close_payload(1000))) \
        == [(OP_BINARY, big), (CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize("data, code", [
    (bytes([0x81, 0x80]) + b"abcd", 1002),                      # masked
    (bytes([0xC1, 0]), 1002),                                   # a reserved bit (RSV1)
    (bytes([0x83, 0]), 1002),                                   # an unknown opcode
    (bytes([0x09, 0]), 1002),                                   # a fragmented ping
    (server_frame(0, b"x"), 1002),                              # nothing to continue
    (server_frame(OP_BINARY, b"x" * 11), 1009)])               # beyond max_message
def test_the_parser_refuses_what_a_server_may_not_send(data, code):
    with pytest.raises(FrameError) as caught:
        FrameParser(max_message=10).feed(data)
    assert caught.value.code == code


def test_close_payloads_cut_their_reason_to_fit_and_1005_has_none():
    assert close_payload(1005) == b""
    payload = close_payload(4000, "é" * 100)
    assert len(payload) <= 125 and payload[:2] == b"\x0f\xa0"
    payload[2:].decode("utf-8")


def test_a_message_in_fragments_counts_their_frames_toward_the_limit():
    """A misbehaving backend's message in tiny or empty fragments: at most max_fragments
    frames make a message (an endless run of empty continuations ends in 1009), and what
    is held is the payload alone (one buffer, not an object per fragment)."""
    parser = FrameParser(max_message=100, max_fragments=50)
    assert parser.feed(server_frame(OP_TEXT, b"", final=False)
                       + server_frame(0, b"", final=False) * 48 + server_frame(0, b"")) \
        == [(OP_TEXT, b"")]
    assert parser.feed(server_frame(OP_TEXT, b"x", final=False)
                       + server_frame(0, b"", final=False) * 49) == []
    assert parser.buffered == 1
    with pytest.raises(FrameError) as caught:
        parser.feed(server_frame(0, b"", final=False))
    assert caught.value.code == 1009
    parser = FrameParser(max_message=201)
    data = server_frame(OP_BINARY, b"ab", final=False) + server_frame(0, b"cd", final=False) \
        * 99 + server_frame(0, b"e")
    message = b"ab" + b"cd" * 99 + b"e"
    assert parser.feed(data * 2) == [(OP_BINARY, message)] * 2 and parser.buffered == 0
    with pytest.raises(FrameError) as caught:
        parser.feed(data.replace(server_frame(0, b"e"), server_frame(0, b"cd")))
    assert caught.value.code == 1009                    # 202 bytes


class _Transport:
    """A transport that records what is written (the upstream client's, sans I/O)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_pongs_wait_while_the_backend_does_not_read_and_only_the_last_is_sent():
    """A backend that floods pings and reads nothing would fill the write buffer with
    pongs: while writing is paused none is written, and on resume only the latest ping
    is answered (RFC 6455 section 5.5.3 allows it)."""
    loop = asyncio.new_event_loop()
    try:
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        upstream = WebSocket(loop, key, ())
        transport = _Transport()
        upstream.connection_made(transport)         # type: ignore[arg-type]
        upstream.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                               b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        upstream.data_received(server_frame(PING, b"0"))
        assert len(transport.written) == 1         # answered at once
        upstream.pause_writing()
        upstream.data_received(b"".join(server_frame(PING, b"%d" % n) for n in range(1000)))
        assert len(transport.written) == 1
        upstream.resume_writing()
        assert len(transport.written) == 2
        parser_input = transport.written[1]
        assert parser_input[0] == 0x80 | PONG and mask(parser_input[6:], parser_input[2:6]) \
            == b"999"
    finally:
        loop.close()
