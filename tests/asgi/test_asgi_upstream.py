"""The ASGI side's upstream client (lbmiddleware.upstream) against scripted raw backends:
response framings, interim responses, malformed heads, keep-alive reuse and stale
connections."""

from __future__ import annotations

import asyncio

import pytest

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.upstream import ProtocolError, ReadTimeout

from ..support.asgi_client import Call
from ..support.raw_backends import CLOSE, OK
from ..support.upstream_client import fetch


def test_chunked_response_is_decoded_and_the_connection_reused(scripted):
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
               b"5;ext=1\r\nhello\r\n", b"7\r\n, world\r\n", b"0\r\nX-Trailer: t\r\n\r\n"]
    server = scripted([chunked, OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[0] == 200 and first[2] == b"hello, world"
    assert second[2] == b"ok" and opened == 1 and server.connections == 1


def test_read_to_close_response_is_read_whole_and_not_reused(scripted):
    server = scripted([[b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n", b"until ", b"the end", CLOSE]], [OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[2] == b"until the end" and second[2] == b"ok"
    assert opened == 2


def test_interim_100_continue_is_skipped(scripted):
    server = scripted([[b"HTTP/1.1 100 Continue\r\n\r\n", OK]])
    (result,), _ = fetch(server.url, (b"POST", b"body"))
    assert result[0] == 200 and result[2] == b"ok"


@pytest.mark.parametrize("method, head", [
    (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")])
def test_responses_without_a_body_keep_the_connection(scripted, method, head):
    server = scripted([head, OK])
    (first, second), opened = fetch(server.url, (method, None), (b"GET", None))
    assert first[2] == b"" and second[2] == b"ok" and opened == 1


def test_connection_close_is_honoured(scripted):
    server = scripted(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"], [OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[2] == b"hi" and second[2] == b"ok" and opened == 2


@pytest.mark.parametrize("head", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Name: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nInjected: b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_responses_are_protocol_errors(scripted, head):
    server = scripted([head])
    (result,), _ = fetch(server.url, (b"GET", None))
    assert isinstance(result, ProtocolError)


def test_a_malformed_response_is_a_502_for_the_client_and_a_failure(scripted):
    server = scripted([b"HTTP/9 what\r\n\r\n"])
    mw = LoadBalancerMiddleware(None, backends=[server.url], retries=0)
    call = asyncio.run(Call(mw, "GET", "/").run())
    assert call.status == 502
    assert mw.balancer.stats()[0]["failures"] == 1


def test_a_chunked_response_reaches_the_client_without_the_upstream_framing(scripted):
    server = scripted([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Length: 99\r\n\r\n",
                        b"3\r\nabc\r\n", b"0\r\n\r\n"]])
    call = asyncio.run(Call(LoadBalancerMiddleware(None, backends=[server.url]), "GET", "/").run())
    assert call.status == 200 and call.body == b"abc" and call.complete
    names = {name.lower() for name, _ in call.headers}
    assert b"transfer-encoding" not in names and b"content-length" not in names


def test_a_stale_keep_alive_connection_is_replaced_for_a_get(scripted):
    server = scripted([OK, CLOSE], [OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[2] == b"ok" and second[2] == b"ok"
    assert opened == 2 and len(server.requests) == 3      # the GET went out twice


def test_a_stale_keep_alive_connection_is_not_replayed_for_a_post(scripted):
    server = scripted([OK, CLOSE], [OK])
    (first, second), _ = fetch(server.url, (b"GET", None), (b"POST", b"once"))
    assert first[2] == b"ok" and isinstance(second, ProtocolError) and second.sent
    assert len(server.requests) == 2


def test_a_body_that_stops_coming_is_a_read_timeout(scripted):
    server = scripted([[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"]])
    (result,), _ = fetch(server.url, (b"GET", None), read_timeout=0.2)
    assert isinstance(result, ReadTimeout) and result.timeout
