"""The upstream request head, one table of cases run through :func:`request_head` and through
the coroutine client (:meth:`HostPool.request`) on a loopback backend that records what it
reads: both give the table's bytes, so the rule has one copy (the fast exchange imports the
same function) and the pool does not drift from it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

import lbmiddleware as lb
from lbmiddleware.upstream import Upstream
from lbmiddleware.upstream.head import request_head

from ..support.servers import RawServer, read_request_head

HOST = b"10.0.0.1:8001"         # the Host the proxy adds (the pool's: its backend's authority)
ACCEPT = [(b"accept", b"*/*"), (b"X-Forwarded-Proto", b"http")]

# (method, target, headers, add_host, length, the head)
CASES = [
    pytest.param(b"GET", b"/a?b=1", ACCEPT, True, 0,
                 b"GET /a?b=1 HTTP/1.1\r\nHost: 10.0.0.1:8001\r\naccept: */*\r\n"
                 b"X-Forwarded-Proto: http\r\n\r\n", id="get-host-first"),
    pytest.param(b"GET", b"/", [(b"Host", b"front"), (b"a", b"1"), (b"a", b"2")], False, 0,
                 b"GET / HTTP/1.1\r\nHost: front\r\na: 1\r\na: 2\r\n\r\n",
                 id="host-of-its-own-and-repeated-fields-in-order"),
    pytest.param(b"GET", b"/", [], False, 0, b"GET / HTTP/1.1\r\n\r\n", id="no-header"),
    pytest.param(b"GET", b"/", [], True, 0, b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8001\r\n\r\n",
                 id="only-host"),
    pytest.param(b"HEAD", b"/h", ACCEPT[:1], True, 0,
                 b"HEAD /h HTTP/1.1\r\nHost: 10.0.0.1:8001\r\naccept: */*\r\n\r\n", id="head"),
    pytest.param(b"POST", b"/", [], False, 0, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                 id="empty-post-framed"),
    pytest.param(b"PUT", b"/", [], False, 0, b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                 id="empty-put-framed"),
    pytest.param(b"PATCH", b"/", [], False, 0,
                 b"PATCH / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", id="empty-patch-framed"),
    pytest.param(b"DELETE", b"/", [], False, 0, b"DELETE / HTTP/1.1\r\n\r\n",
                 id="empty-delete-unframed"),
    pytest.param(b"DELETE", b"/d", [(b"Host", b"front")], False, 3,
                 b"DELETE /d HTTP/1.1\r\nHost: front\r\nContent-Length: 3\r\n\r\n",
                 id="any-method-with-a-body"),
    pytest.param(b"POST", b"/up%20load", ACCEPT[:1], True, None,
                 b"POST /up%20load HTTP/1.1\r\nHost: 10.0.0.1:8001\r\naccept: */*\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n", id="unknown-length-chunked"),
    pytest.param(b"GET", b"/", [], False, None,
                 b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", id="get-chunked"),
]


@pytest.mark.parametrize(("method", "target", "headers", "add_host", "length", "head"), CASES)
def test_request_head_writes_the_tables_bytes(method, target, headers, add_host, length, head):
    assert request_head(method, target, headers, HOST if add_host else None, length) == head


class Recorder(RawServer):
    """Records each request's head, reads its body by its framing, answers ``200 ok``
    (``HEAD``: the head alone)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            while (head := read_request_head(reader)) is not None:
                self.heads.append(head)
                fields = head.lower().split(b"\r\n")
                if b"transfer-encoding: chunked" in fields:
                    while (size := int(reader.readline().split(b";")[0], 16)):
                        reader.read(size + 2)
                    reader.readline()
                for field in fields:
                    if field.startswith(b"content-length:"):
                        reader.read(int(field.split(b":")[1]))
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                conn.sendall(answer if head.startswith(b"HEAD ") else answer + b"ok")


async def pieces(body: bytes) -> AsyncIterator[bytes]:
    yield body


@pytest.mark.parametrize(("method", "target", "headers", "add_host", "length", "head"), CASES)
def test_the_coroutine_client_sends_the_tables_bytes(method, target, headers, add_host, length,
                                                      head):
    backend = Recorder()

    async def send() -> int:
        upstream = Upstream(read_timeout=5.0)
        pool = upstream.pool(lb.Backend(backend.url))
        body = (pieces(b"abc") if length is None else b"x" * length if length else None)
        response = await pool.request(method, target, headers, body, length, add_host=add_host)
        if method != b"HEAD":
            assert await response.read() == b"ok"
        upstream.close()
        return response.status

    try:
        assert asyncio.run(send()) == 200
    finally:
        backend.stop()
    authority = f"{backend.host}:{backend.port}".encode()
    assert backend.heads == [head.replace(HOST, authority)]
