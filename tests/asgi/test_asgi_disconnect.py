"""A client that leaves is noticed whatever the exchange is doing, under a real server.

The middleware runs under uvicorn in a thread (so the test reads the balancer's in-flight
count) between a raw-socket client and a raw-socket backend.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from lbmiddleware.asgi import LoadBalancerMiddleware

from ..support.asgi_server import ServerThread
from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.servers import RawServer, read_request_head

STREAM_LIMIT = 20.0      # seconds: the "endless" stream ends by then whatever happens
# How long the proxy may take to notice the client left: far below STREAM_LIMIT, with room
# for a loaded 2-core machine (it takes milliseconds when the machine is idle).
NOTICE = 5.0


class EndlessBackend(RawServer):
    """Answers every request at once, without reading its body, with a chunked stream
    that ends only when the client closes (``peer_closed``) or after STREAM_LIMIT."""

    def __init__(self) -> None:
        self.peer_closed = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        read_request_head(conn.makefile("rb"))
        chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
        deadline = time.monotonic() + STREAM_LIMIT
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while time.monotonic() < deadline and not self.stopping.is_set():
                conn.sendall(chunk)
                time.sleep(0.005)
        except OSError:
            self.peer_closed.set()


@pytest.fixture
def endless():
    backend = EndlessBackend()
    yield backend
    backend.stop()


def in_flight(mw: LoadBalancerMiddleware) -> int:
    return sum(row["in_flight"] for row in mw.balancer.stats())


def read_early_response_and_leave(port: int) -> int:
    """POST announcing 20 MB, send 300 KB, read 50 KB of the response and close.
    Returns the bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                       % (20 << 20) + b"u" * 300_000)
        received = 0
        while received < 50_000:
            chunk = client.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        return received


def test_a_client_leaving_an_early_response_during_its_upload_is_noticed(endless):
    """The backend streams an answer at once to an upload that has not ended; the client
    reads some and closes: the pick is released and the upstream closed."""
    mw = LoadBalancerMiddleware(backends=[endless.url], read_timeout=30.0)
    with ServerThread(mw) as server:
        assert read_early_response_and_leave(server.port) >= 50_000
        deadline = time.monotonic() + NOTICE
        while in_flight(mw) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_flight(mw) == 0
        assert endless.peer_closed.wait(NOTICE)


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_the_gateway_closes_the_upstream_when_that_client_leaves(endless, server):
    with GatewayProcess({"LB_BACKENDS": endless.url, "LB_SERVER": server,
                         "LB_READ_TIMEOUT": "30s"}) as gateway:
        assert read_early_response_and_leave(gateway.port) >= 50_000
        assert endless.peer_closed.wait(NOTICE)
