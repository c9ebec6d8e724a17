"""Requests crafted to fool a backend behind the proxy: header spellings it would misread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.proxy import BINARY, TEXT
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.asgi_client import Call

# The `_` spellings of names the proxy sets, removes or a backend trusts from its proxy: a
# CGI/WSGI server maps `X_Forwarded_Host` and `X-Forwarded-Host` to one HTTP_X_FORWARDED_HOST.
UNDERSCORED = ["X_Forwarded_Host", "X_Forwarded_Proto", "X_Forwarded_For", "x_forwarded_port",
               "X_Forwarded_Prefix", "X_Forwarded_Server", "X_Real_IP", "Proxy_Authorization",
               "Proxy_Connection", "Keep_Alive", "Transfer_Encoding", "Content_Length"]


def request(rules, headers, **kwargs):
    options = dict(peer="198.51.100.9", scheme="http")
    options.update(kwargs)
    return rules.request_headers(headers, **options)


@pytest.mark.parametrize("name", UNDERSCORED)
def test_underscore_spellings_of_proxy_headers_are_dropped(name):
    received = [("Host", "real.example"), (name, "evil.example"), ("Accept", "*/*")]
    text = request(TEXT, received)
    binary = request(BINARY, [(n.encode(), v.encode()) for n, v in received])
    assert [n for n, _ in text] == ["Accept", "X-Forwarded-For", "X-Forwarded-Proto",
                                    "X-Forwarded-Host"]
    assert binary == [(n.encode(), v.encode()) for n, v in text]


def test_other_underscore_headers_and_a_trusted_peers_values_are_kept():
    out = dict(request(TEXT, [("Host", "inner"), ("X_Request_Id", "7"), ("X_Forwarded", "1"),
                              ("X-Forwarded-Host", "public.example"),
                              ("X_Forwarded_Host", "evil.example")], trusted_peer=True))
    assert out["X_Request_Id"] == "7" and out["X_Forwarded"] == "1"
    assert out["X-Forwarded-Host"] == "public.example"
    assert "X_Forwarded_Host" not in out


def test_underscore_forwarding_headers_never_reach_the_backend(backends):
    """End to end: the backend (which echoes what it got) sees only the proxy's values."""
    a = backends[0]
    mw = LoadBalancerMiddleware(backends=[a.url])
    headers = [("X_Forwarded_Host", "evil.example"), ("X_Forwarded_Proto", "https"),
               ("X_Forwarded_For", "1.2.3.4"), ("X_Real_IP", "1.2.3.4"), ("X_Trace", "t")]
    response = asyncio.run(Call(mw, "GET", "/", headers=headers, host="real.example").run())
    got = response.json()["headers"]
    assert not [name for name in got if name.lower().replace("_", "-") in (
        "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for", "x-real-ip") and "_" in name]
    assert got["X-Forwarded-Host"] == "real.example"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-For"] == "203.0.113.7"
    assert got["X_Trace"] == "t"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_the_wsgi_middleware_sees_underscore_spellings_merged_and_replaces_them(backends):
    """A WSGI server folds ``X_Forwarded_Host`` into HTTP_X_FORWARDED_HOST (wsgiref does;
    gunicorn and waitress drop it): the middleware cannot tell the spellings apart, and
    the merged value, like the client's own ``X-Forwarded-Host``, is replaced."""
    a = backends[0]
    server = make_server("127.0.0.1", 0, WSGILoadBalancer(None, backends=[a.url]),
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: real.example\r\n"
                         b"X_Forwarded_Host: evil.example\r\nX_Forwarded_Proto: https\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    got = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
    assert got["X-Forwarded-Host"] == "real.example"
    assert got["X-Forwarded-Proto"] == "http"
    assert not [name for name in got if "_" in name]
