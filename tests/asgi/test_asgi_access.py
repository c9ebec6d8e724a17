"""The ASGI middleware's access log (``access_log=True``) as a middleware user gets it: under
a real uvicorn server, over loopback backends, one record per proxied request on the
``lbmiddleware.access`` logger, read from ``caplog`` and parsed back."""

from __future__ import annotations

import asyncio
import socket

import requests

from lbmiddleware.asgi import LoadBalancerMiddleware

from ..proxy.test_access import access_records
from ..support.asgi_client import Call
from ..support.asgi_server import ServerThread
from ..support.servers import refused_url
from ..support.waiting import until
from .test_asgi_websocket import HANDSHAKE, websocket, ws_app


async def local_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"local"})


def test_each_proxied_request_gets_one_line(access_log, servers):
    a = servers("a")
    dead = refused_url()
    app = LoadBalancerMiddleware(local_app, prefix="/api", backends=[dead, a.url], max_fails=1,
                                 retries=1, access_log=True, trusted_proxies=["127.0.0.1"])
    with ServerThread(app) as server, requests.Session() as session:
        base = f"http://127.0.0.1:{server.port}"
        assert session.get(f"{base}/api/one?secret=1", timeout=5).status_code == 200
        assert session.get(f"{base}/api/caf%C3%A9", timeout=5,
                           headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 200
        assert session.get(f"{base}/local", timeout=5).text == "local"     # the app's
        until(lambda: len(access_records(access_log)) == 2, 5, "two access lines")
    lines = {line["path"]: line for line in access_records(access_log)}
    one, cafe = lines["/api/one"], lines["/api/caf\u00e9"]
    assert one == {"client": "127.0.0.1", "method": "GET", "path": "/api/one", "status": "200",
                   "backend": a.url, "attempts": "2", "duration_ms": one["duration_ms"]}
    assert (cafe["path"], cafe["client"], cafe["attempts"]) == ("/api/caf\u00e9",
                                                               "198.51.100.4", "1")
    assert len(access_records(access_log)) == 2      # nothing for the app's own path


def test_a_client_gone_before_the_answer_is_499(access_log, servers):
    a = servers("a")
    a.behaviour = "hang"
    app = LoadBalancerMiddleware(None, backends=[a.url], access_log=True)
    with ServerThread(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            until(lambda: a.requests == 1, 5, "the request at the backend")
        until(lambda: access_records(access_log), 5, "the access line")
    (line,) = access_records(access_log)
    assert (line["status"], line["backend"], line["attempts"]) == ("499", a.url, "1")



def test_a_client_gone_before_a_quick_answer_began_is_499(access_log, servers):
    """A client that sends its request and half-closes (as HTTP/1.0 tools and netcat do):
    uvicorn closes at its EOF and drops the answer the backend gives soon after; the line
    says 499, the status of a client that left before a response began (docs/contract.md,
    The access log), not the backend's 200 that never reached it."""
    a = servers("a")
    app = LoadBalancerMiddleware(None, backends=[a.url], access_log=True)
    with ServerThread(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        until(lambda: access_records(access_log), 5, "the access line")
    (line,) = access_records(access_log)
    assert got == b"" and line["status"] == "499", (got, line)


def test_the_access_log_is_off_by_default(access_log, servers):
    a = servers("a")
    app = LoadBalancerMiddleware(None, backends=[a.url])
    with ServerThread(app) as server:
        for _ in range(3):
            assert requests.get(f"http://127.0.0.1:{server.port}/x", timeout=5).ok
    assert access_records(access_log) == []


def test_a_websocket_handshake_gets_its_line_whichever_way_the_server_hands_it_over(
        access_log, servers):
    """A handshake the server hands over as HTTP (WebSockets off) is refused 501 and logged
    like any request; as a ``websocket`` scope it is proxied, and its line has the status
    the client got: the backend's answer (a plain HTTP backend's 200) where the server has
    the denial-response extension, 403 (a close before the handshake) where not."""
    a = servers("a")
    app = LoadBalancerMiddleware(None, backends=[a.url], access_log=True)
    denial = {"websocket.http.response": {}}

    async def scenario():
        return (await websocket(app, "/chat", denial), await websocket(app, "/old"),
                await Call(app, "GET", "/plain", headers=HANDSHAKE).run())

    denied, closed, plain = asyncio.run(scenario())
    app.balancer.close()
    assert denied[0]["status"] == 200 and closed[0]["type"] == "websocket.close"
    assert plain.status == 501
    lines = {line["path"]: line for line in access_records(access_log)}
    assert len(access_records(access_log)) == 3
    for path, status, backend, attempts in (("/chat", "200", a.url, "1"),
                                            ("/old", "403", a.url, "1"),
                                            ("/plain", "501", "-", "0")):
        line = lines[path]
        assert line == {"client": line["client"], "method": "GET", "path": path,
                        "status": status, "backend": backend, "attempts": attempts,
                        "duration_ms": line["duration_ms"]}
    assert lines["/chat"]["client"] == lines["/old"]["client"] == "127.0.0.1"
    assert a.requests == 2


def test_a_websocket_scope_outside_the_prefix_is_the_apps_and_not_logged(access_log, servers):
    a = servers("a")
    app = LoadBalancerMiddleware(ws_app, prefix="/api", backends=[a.url], access_log=True)
    sent = asyncio.run(websocket(app, "/ws"))
    app.balancer.close()
    assert sent == [{"type": "websocket.accept"}] and access_records(access_log) == []
