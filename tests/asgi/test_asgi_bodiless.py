"""Responses that carry no body (204, 304) under a real ASGI server that checks lengths.

RFC 9110 section 8.6 lets a 304 carry the ``Content-Length`` its 200 would have; uvicorn
checks every response's body against that header, so the middleware must not pass it on
for a response that has no body, or the client loses its connection (and the next request
on it) to a "Response content shorter than Content-Length" error.
"""

from __future__ import annotations

import http.client
import socket

import pytest

from lbmiddleware.asgi import LoadBalancerMiddleware

from ..support.asgi_server import ServerThread
from ..support.raw_backends import RawBackend, ok


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
], ids=["304", "204"])
def test_a_bodiless_response_with_a_content_length_keeps_the_connection(head):
    backend = RawBackend([head], [ok(b"second")])
    middleware = LoadBalancerMiddleware(backends=[backend.url], read_timeout=5.0)
    try:
        with ServerThread(middleware) as server, \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"GET /1 HTTP/1.1\r\nHost: gw\r\n\r\n")
            first = http.client.HTTPResponse(client, method="GET")
            first.begin()
            assert first.status == int(head[9:12]) and first.read() == b""
            # the same connection carries the next request: the server did not cut it
            client.sendall(b"GET /2 HTTP/1.1\r\nHost: gw\r\n\r\n")
            second = http.client.HTTPResponse(client, method="GET")
            second.begin()
            assert (second.status, second.read()) == (200, b"second")
            [row] = middleware.balancer.stats()
            assert (row["requests"], row["failures"], row["in_flight"]) == (2, 0, 0)
    finally:
        backend.stop()
