"""The upstream pool's ``head_timeout`` (a request's deadline, the time it has left) and the
body bytes it says it sent, against real loopback sockets: the deadline bounds the connect,
the upload and the wait for the head together, and says when it was what ran out."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

import lbmiddleware as lb
from lbmiddleware.upstream import ConnectTimeout, ReadTimeout, Upstream, UpstreamError

from ..support.servers import RawServer, read_request_head, unaccepting_url

MB = b"u" * 1_000_000


class Unread(RawServer):
    """Reads a request's head, never its body, and never answers (until stopped)."""

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            read_request_head(reader)
            self.stopping.wait(30)


async def chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield MB


def attempt(url: str, body=None, length: int | None = 0, *, connect_timeout: float = 5.0,
            read_timeout: float = 10.0, head_timeout: float | None = None):
    """One request on a fresh pool: the response (its body read) or the UpstreamError, and
    the seconds it took."""
    async def run():
        upstream = Upstream(connect_timeout=connect_timeout, read_timeout=read_timeout)
        pool = upstream.pool(lb.Backend(url))
        started = time.monotonic()
        try:
            response = await pool.request(b"PUT" if body else b"GET", b"/", [], body, length,
                                          head_timeout=head_timeout)
            while await response.read():
                pass
            return response, time.monotonic() - started
        except UpstreamError as exc:
            return exc, time.monotonic() - started
        finally:
            upstream.close()
    return asyncio.run(run())


def test_a_head_timeout_cuts_the_wait_for_the_head_and_says_so(servers):
    a = servers("a")
    a.behaviour = "hang"
    error, took = attempt(a.url, read_timeout=10, head_timeout=0.3)
    assert isinstance(error, ReadTimeout) and error.deadline and error.sent
    assert took < 0.3 + 1.0


def test_a_read_timeout_shorter_than_the_head_timeout_is_the_pools_own(servers):
    a = servers("a")
    a.behaviour = "hang"
    error, _ = attempt(a.url, read_timeout=0.2, head_timeout=10)
    assert isinstance(error, ReadTimeout) and not error.deadline


def test_a_head_timeout_cuts_the_connect_and_says_so():
    with unaccepting_url() as silent:
        error, took = attempt(silent, connect_timeout=10, head_timeout=0.3)
        own, _ = attempt(silent, connect_timeout=0.2, head_timeout=10)
    assert isinstance(error, ConnectTimeout) and error.deadline and not error.sent
    assert took < 0.3 + 1.0
    assert isinstance(own, ConnectTimeout) and not own.deadline


def test_a_head_timeout_covers_an_upload_the_backend_does_not_read():
    """64 MB streamed to a backend that reads none of it: the upload stalls once the
    socket buffers are full (the read timeout, 10 s, would bound each wait for them to
    drain); the head timeout ends it all."""
    server = Unread()
    try:
        error, took = attempt(server.url, chunks(64), 64_000_000, head_timeout=0.5)
    finally:
        server.stop()
    assert isinstance(error, ReadTimeout) and error.deadline
    assert 0 < error.bytes_sent < 64_000_000
    assert took < 0.5 + 1.0


@pytest.mark.parametrize("streamed", [False, True])
def test_the_response_says_how_many_body_bytes_were_sent(servers, streamed):
    a = servers("a")
    body = chunks(3) if streamed else MB
    response, _ = attempt(a.url, body, None if streamed else len(MB))
    assert response.status == 200 and response.bytes_sent == (3 if streamed else 1) * len(MB)
    empty, _ = attempt(a.url)
    assert empty.bytes_sent == 0


def test_a_failure_after_the_upload_says_how_many_body_bytes_were_sent(servers):
    a = servers("a")
    a.behaviour = "close"           # reads the body, closes without an answer
    error, _ = attempt(a.url, MB, len(MB))
    assert isinstance(error, UpstreamError) and error.sent and error.bytes_sent == len(MB)
