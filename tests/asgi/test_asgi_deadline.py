"""The ASGI middleware's part of the request deadline (``LB_TIMEOUT``), the sticky cookie and
the bytes each attempt reports, where ASGI is particular: the failed-attempt line of an
attempt the deadline cut, an upload the backend does not read, cookies split over several
headers (HTTP/2), and the bytes of attempts that failed or whose client left. What every
proxy front-end does is the proxy contract (tests/contract/proxy_contract.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.core.sticky import sticky_value

from ..support.asgi_client import Call
from ..support.servers import RawServer, read_request_head


class Unread(RawServer):
    """Reads a request's head, never its body, and never answers (until stopped)."""

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            read_request_head(reader)
            self.stopping.wait(30)


def call(middleware, method: str = "GET", path: str = "/", **kwargs) -> Call:
    return asyncio.run(Call(middleware, method, path, **kwargs).run(timeout=10))


def row(middleware, url: str) -> dict:
    return next(r for r in middleware.balancer.stats() if r["url"] == url)


def test_the_attempt_the_deadline_cut_says_so_and_no_retry_follows(backends, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    a, b, c = backends
    a.status, a.delay = 503, 0.15
    b.behaviour = "hang"
    middleware = LoadBalancerMiddleware(backends=[s.url for s in backends], timeout=0.4,
                                        read_timeout=5, max_fails=0)
    assert call(middleware).status == 504
    lines = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    assert lines == [
        f"GET attempt 1 on {a.url} failed: status 503; retrying on {b.url}",
        f"GET attempt 2 on {b.url} failed: the request's 400ms deadline (LB_TIMEOUT) ran "
        "out; not retried: the request's 400ms deadline (LB_TIMEOUT) has passed"]
    assert (row(middleware, b.url)["failures"], row(middleware, b.url)["in_flight"]) == (1, 0)
    assert c.requests == 0


def test_the_deadline_covers_an_upload_the_backend_does_not_read():
    """64 MB streamed (past retry_buffer) to a backend that reads none of it: the upload
    stalls once the socket buffers are full, and the deadline answers 504 (the read timeout,
    30 s, bounds only each wait for them to drain)."""
    server = Unread()
    try:
        middleware = LoadBalancerMiddleware(backends=[server.url], timeout=0.5,
                                            read_timeout=30)
        started = time.monotonic()
        result = call(middleware, "PUT", body=[b"u" * 1_000_000] * 64,
                      headers=[("Content-Length", "64000000")])
        took = time.monotonic() - started
    finally:
        server.stop()
    assert result.status == 504
    assert took < 0.5 + 1.0, f"the 0.5 s deadline answered after {took:.2f} s"
    (stats,) = middleware.balancer.stats()
    assert stats["in_flight"] == 0 and 0 < stats["bytes_sent"] < 64_000_000


def test_a_sticky_cookie_among_several_cookie_headers_is_read(backends):
    """HTTP/2 may split the Cookie header: each is read, and each goes upstream."""
    b = backends[1]
    middleware = LoadBalancerMiddleware(backends=[s.url for s in backends], sticky_cookie="lb")
    for _ in range(3):
        result = call(middleware, headers=[("cookie", "theme=dark"),
                                           ("cookie", f"sid=1; lb={sticky_value(b.url)}")])
        assert result.json()["server"] == "b" and result.header("set-cookie") == []
    assert b.requests == 3


def test_a_failed_attempt_reports_the_body_bytes_it_sent(backends):
    a, b = backends[:2]
    a.behaviour = "close"               # reads the body, closes without an answer
    middleware = LoadBalancerMiddleware(backends=[a.url, b.url], max_fails=0)
    assert call(middleware, "PUT", body=b"p" * 5000).json()["server"] == "b"
    assert (row(middleware, a.url)["failures"], row(middleware, a.url)["bytes_sent"]) == (
        1, 5000)
    assert row(middleware, b.url)["bytes_sent"] == 5000


def test_a_client_that_leaves_mid_response_reports_the_bytes_it_got(backends):
    """The backend sends half its body and waits; the client leaves once it has that half:
    the attempt (the client's doing, not a failure) reports the 200,000 bytes."""
    a = backends[0]
    a.behaviour = "stall"
    a.body_size = 400_000
    middleware = LoadBalancerMiddleware(backends=[a.url])
    result = call(middleware, disconnect_after=200_000)
    assert result.status == 200 and not result.complete and len(result.body) == 200_000
    assert a.peer_closed.wait(2)
    (stats,) = middleware.balancer.stats()
    assert (stats["in_flight"], stats["failures"], stats["bytes_received"]) == (0, 0, 200_000)
