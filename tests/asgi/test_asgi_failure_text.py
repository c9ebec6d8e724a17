"""The words of a failed attempt (``Outcome.error``, which the failed attempt's log line
shows): the ASGI side's upstream client failing against real loopback sockets, and its
error turned into text by ``exchange.failure_text``."""

from __future__ import annotations

import asyncio

import pytest

import lbmiddleware as lb
from lbmiddleware.asgi.exchange import failure_text
from lbmiddleware.upstream import Upstream, UpstreamError

from ..support.servers import refused_url, unaccepting_url


def failure(url: str, connect_timeout: float = 2.0, read_timeout: float = 0.2) -> str:
    async def attempt() -> str:
        upstream = Upstream(connect_timeout=connect_timeout, read_timeout=read_timeout)
        pool = upstream.pool(lb.Backend(url))
        try:
            await pool.request(b"GET", b"/", [])
        except UpstreamError as exc:
            return failure_text(exc, pool)
        finally:
            upstream.close()
        raise AssertionError("the attempt did not fail")
    return asyncio.run(attempt())


def test_a_refused_connection():
    assert failure(refused_url()) == "connection refused"


@pytest.mark.parametrize("read_timeout, text", [(0.2, "200ms"), (1.0, "1s"), (1.5, "1.5s")])
def test_no_answer_within_the_read_timeout(servers, read_timeout, text):
    backend = servers("a")
    backend.behaviour = "hang"
    assert failure(backend.url, read_timeout=read_timeout) == f"read timed out after {text}"


def test_a_connection_closed_without_an_answer(servers):
    backend = servers("a")
    backend.behaviour = "close"
    assert failure(backend.url) == "the backend closed the connection"


def test_no_connection_within_the_connect_timeout():
    with unaccepting_url() as silent:
        assert failure(silent, connect_timeout=0.3) == "connect timed out after 300ms"


def test_a_name_that_does_not_resolve():
    text = failure("http://no-such-host.invalid:80")
    assert text and "unknown error" not in text.lower() and text[0].islower()
