"""The request's deadline (``LB_TIMEOUT``) on each wait of the httpx transports' I/O
(lbmiddleware/transport/deadline.py): a head trickling in over TLS, the body after a head
that took most of the deadline. What every client
front-end does with the deadline is the client contract (tests/contract/client_contract.py).

Real loopback backends; each duration is bounded loosely (the limit plus a second) where
the bug waited several times longer, and what happened is checked beside it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httpx
import pytest

from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

from ..contract.client_drivers import TricklingHead

VHOST = "http://svc"
KINDS = ["sync", "async"]


def get(kind: str, url: str, client_options: dict[str, Any] | None = None,
        **options: Any) -> tuple[httpx.Response | httpx.HTTPError, LoadBalancingTransport
                                 | AsyncLoadBalancingTransport]:
    """One GET of ``VHOST`` through a new transport of ``kind`` over ``url`` (``options``:
    its keywords): the response read, or the httpx error it raised; and the transport."""
    client_options = client_options or {}
    if kind == "sync":
        transport = LoadBalancingTransport([url], **options)
        with httpx.Client(transport=transport, **client_options) as client:
            try:
                return client.get(f"{VHOST}/"), transport
            except httpx.HTTPError as exc:
                return exc, transport

    async def call() -> httpx.Response | httpx.HTTPError:
        async with httpx.AsyncClient(transport=async_transport, **client_options) as client:
            try:
                return await client.get(f"{VHOST}/")
            except httpx.HTTPError as exc:
                return exc

    async_transport = AsyncLoadBalancingTransport([url], **options)
    return asyncio.run(call()), async_transport


def counts(transport: LoadBalancingTransport | AsyncLoadBalancingTransport
           ) -> tuple[int, int, int]:
    (row,) = transport.balancer.stats()
    return row["requests"], row["failures"], row["in_flight"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_deadline_bounds_a_response_head_trickling_in_over_tls(kind, certificate):
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    trickling = TricklingHead(tls=tls)
    try:
        started = time.monotonic()
        error, transport = get(kind, trickling.url, timeout=0.5, read_timeout=5,
                               verify=ssl.create_default_context(cafile=cert))
        took = time.monotonic() - started
        assert isinstance(error, httpx.ReadTimeout), repr(error)
        assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the wait after {took:.2f} s"
        assert str(error).startswith("the request's 500ms deadline (LB_TIMEOUT) ran out: ")
        assert trickling.given_up.wait(2), "the attempt's connection is still open"
        assert counts(transport) == (1, 1, 0)
    finally:
        trickling.stop()


def test_the_body_after_a_head_that_took_most_of_the_deadline_gets_the_read_timeout(
        raw_backend):
    """The head trickles in for 3 s of the 4 s deadline, each of its reads cut to the time
    left (the last to about 1 s); the body then pauses 1.75 s, within the 2.5 s read timeout
    its reads have (the deadline bounds the wait for the head, not the body). Async: the
    deadline is the task's while it awaits the head, not after."""
    head = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Padding: "] + [0.1, b"p"] * 30
    backend = raw_backend([*head, b"\r\n\r\nab", 1.75, b"cd"])
    response, transport = get("async", backend.url, timeout=4.0, read_timeout=2.5)
    assert isinstance(response, httpx.Response), repr(response)
    assert (response.status_code, response.content) == (200, b"abcd")
    assert counts(transport) == (1, 0, 0)
