"""WSGI middleware: bodies stream both ways with bounded memory; a client that leaves early.

A streaming backend (in this file: it never holds a body in memory) sits behind the
middleware, which runs in a real threaded wsgiref server; the client is a raw socket, so
nothing on the path buffers a whole body.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
import urllib.parse
import zlib

import pytest
from urllib3.exceptions import ProtocolError

import lbmiddleware as lb

from ..support.http_client import raw_request, read_response
from ..support.wsgi_client import call, environ_for
from ..support.wsgi_server import serve_wsgi

MB = 1024 * 1024
BLOCK = bytes(range(256)) * 1024          # 256 KiB of a pattern


class _StreamHandler(http.server.BaseHTTPRequestHandler):
    """``/sink``: reads the body in blocks, answers its size and CRC-32.
    ``/source?size=N[&chunked=1]``: sends N bytes of the pattern, block by block."""

    protocol_version = "HTTP/1.1"
    server: StreamingBackend._Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        size = int(query.get("size", ["0"])[0])
        chunked = query.get("chunked") == ["1"]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        owner = self.server.owner
        sent = 0
        try:
            while sent < size:
                block = BLOCK[: min(len(BLOCK), size - sent)]
                if chunked:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
                sent += len(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with owner.lock:
                owner.aborted.append(sent)
            self.close_connection = True
            return
        with owner.lock:
            owner.completed.append(sent)

    def do_POST(self) -> None:
        crc, total = 0, 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, len(BLOCK)))
                    crc, total = zlib.crc32(data, crc), total + len(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, len(BLOCK)))
                if not data:
                    break
                crc, total = zlib.crc32(data, crc), total + len(data)
                remaining -= len(data)
        body = json.dumps({"bytes": total, "crc32": crc,
                           "framing": "chunked" if "Transfer-Encoding" in self.headers
                           else "length"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST


class StreamingBackend:
    """A loopback backend that streams; records downloads completed and aborted."""

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        owner: StreamingBackend

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed: list[int] = []
        self.aborted: list[int] = []
        self._server = self._Server(("127.0.0.1", 0), _StreamHandler)
        self._server.owner = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


@pytest.fixture
def streaming():
    backend = StreamingBackend()
    yield backend
    backend.stop()


class PeakRss:
    """The process's resident memory, sampled every few milliseconds (peak above start)."""

    def __init__(self) -> None:
        self._page = 4096
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _crc_of_pattern(size: int) -> int:
    crc, sent = 0, 0
    while sent < size:
        block = BLOCK[: min(len(BLOCK), size - sent)]
        crc = zlib.crc32(block, crc)
        sent += len(block)
    return crc


def test_a_200_mb_upload_streams_through_with_bounded_memory(streaming):
    size = 200 * MB
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    with serve_wsgi(middleware) as port, PeakRss() as memory:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /sink HTTP/1.1\r\nHost: gateway\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % size)
            sent = 0
            while sent < size:
                sock.sendall(BLOCK)
                sent += len(BLOCK)
            status, headers, body = read_response(sock)
    assert status == 200
    assert json.loads(body) == {"bytes": size, "crc32": _crc_of_pattern(size),
                                "framing": "length"}
    assert memory.growth < 50 * MB, f"RSS grew by {memory.growth / MB:.0f} MB"
    assert middleware.balancer.stats()[0]["in_flight"] == 0


def test_a_200_mb_download_streams_through_with_bounded_memory(streaming):
    size = 200 * MB
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    with serve_wsgi(middleware) as port, PeakRss() as memory:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /source?size=%d HTTP/1.1\r\nHost: gateway\r\n\r\n" % size)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            crc, received = zlib.crc32(rest), len(rest)
            while True:
                data = sock.recv(1024 * 1024)
                if not data:
                    break
                crc, received = zlib.crc32(data, crc), received + len(data)
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: %d" % size in head
    assert (received, crc) == (size, _crc_of_pattern(size))
    assert memory.growth < 50 * MB, f"RSS grew by {memory.growth / MB:.0f} MB"
    assert middleware.balancer.stats()[0]["in_flight"] == 0


class PatternInput:
    """A ``wsgi.input`` that produces ``size`` bytes of the pattern without holding them;
    ``fail_after`` makes it end early (a client that goes away mid-upload)."""

    def __init__(self, size: int, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.position = 0

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.position >= self.fail_after:
            raise ConnectionResetError("client went away")
        n = self.size - self.position if n is None or n < 0 else min(n, self.size - self.position)
        n = min(n, len(BLOCK))
        self.position += n
        return BLOCK[:n]


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_client_leaving_mid_download_closes_the_upstream_and_ends_the_attempt(streaming):
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    iterable = middleware(environ_for(path="/source", query=f"size={100 * MB}"),
                          lambda status, headers: None)
    assert next(iter(iterable))
    assert middleware.balancer.stats()[0]["in_flight"] == 1
    iterable.close()                                   # what the server does when the client leaves
    assert middleware.balancer.stats()[0]["in_flight"] == 0
    assert _wait_for(lambda: streaming.aborted), "the backend kept sending"
    assert streaming.completed == []
    row = middleware.balancer.stats()[0]
    assert (row["requests"], row["failures"]) == (1, 0)


def test_a_client_leaving_mid_download_through_a_real_server(streaming):
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    with serve_wsgi(middleware) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /source?size=%d HTTP/1.1\r\nHost: g\r\n\r\n" % (100 * MB))
            received = 0
            while received < MB:
                received += len(sock.recv(65536))
        assert _wait_for(lambda: middleware.balancer.stats()[0]["in_flight"] == 0)
        assert _wait_for(lambda: streaming.aborted), "the backend kept sending"
    assert streaming.completed == []


def test_a_client_leaving_mid_upload_is_not_the_backends_fault(streaming):
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    environ = environ_for("PUT", "/sink", CONTENT_LENGTH=str(50 * MB))
    environ["wsgi.input"] = PatternInput(50 * MB, fail_after=5 * MB)
    result = call(middleware, environ, validate=False)
    assert result.code == 400
    row = middleware.balancer.stats()[0]
    assert (row["in_flight"], row["failures"], row["state"]) == (0, 0, "healthy")


def test_a_chunked_upload_the_server_decoded_streams_upstream_chunked(streaming):
    size = 20 * MB
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    environ = environ_for("POST", "/sink", headers={"Transfer-Encoding": "chunked"})
    environ["wsgi.input"] = PatternInput(size)
    environ["wsgi.input_terminated"] = True
    result = call(middleware, environ, validate=False)
    assert result.json() == {"bytes": size, "crc32": _crc_of_pattern(size), "framing": "chunked"}


def test_a_chunked_response_reaches_the_client_whole_without_upstream_framing(streaming):
    size = 3 * MB + 17
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    result = call(middleware, environ_for(path="/source", query=f"size={size}&chunked=1"))
    names = {name.lower() for name, _ in result.headers}
    assert "transfer-encoding" not in names and "content-length" not in names
    assert (len(result.body), zlib.crc32(result.body)) == (size, _crc_of_pattern(size))
    with serve_wsgi(middleware) as port:
        status, headers, body = raw_request(
            port, b"GET /source?size=%d&chunked=1 HTTP/1.1\r\nHost: g\r\n\r\n" % size)
    assert status == 200 and (len(body), zlib.crc32(body)) == (size, _crc_of_pattern(size))


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_the_response_bytes_passed_on_are_counted_for_their_backend(streaming, chunked):
    size = 3 * MB + 17
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    query = b"size=%d&chunked=1" % size if chunked else b"size=%d" % size
    with serve_wsgi(middleware) as port:
        status, _, body = raw_request(port, b"GET /source?%s HTTP/1.1\r\nHost: g\r\n\r\n" % query)
    assert status == 200 and len(body) == size
    row = middleware.balancer.stats()[0]
    assert (row["requests"], row["in_flight"], row["bytes_received"]) == (1, 0, size)


def test_a_client_leaving_mid_download_counts_the_bytes_read_until_then(streaming):
    middleware = lb.WSGILoadBalancer(None, backends=[streaming.url])
    iterable = middleware(environ_for(path="/source", query=f"size={100 * MB}"),
                          lambda status, headers: None)
    chunks = iter(iterable)
    passed = len(next(chunks)) + len(next(chunks))
    iterable.close()
    row = middleware.balancer.stats()[0]
    assert (row["in_flight"], row["bytes_received"]) == (0, passed)


def test_a_response_body_that_breaks_off_is_a_failure_with_its_attempt_line(servers, caplog):
    """The backend sends its head and half its body, then closes: the client gets a cut
    response, and the backend a failure (with the bytes that came) that no retry can follow,
    logged as every failed attempt is: one INFO line on lbmiddleware.attempts."""
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    backend = servers("a")
    backend.behaviour = "truncate"
    backend.body_size = 1_000_000
    middleware = lb.WSGILoadBalancer(None, backends=[backend.url], max_fails=0)
    iterable = middleware(environ_for(path="/x"), lambda status, headers: None)
    passed = 0
    with pytest.raises(ProtocolError):                 # (the server's to handle)
        for chunk in iterable:
            passed += len(chunk)
    iterable.close()                                    # what the server does then
    row = middleware.balancer.stats()[0]
    assert (row["requests"], row["failures"], row["in_flight"]) == (1, 1, 0)
    assert row["bytes_received"] == passed == 500_000
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "lbmiddleware.attempts"]
    assert lines == [(logging.INFO, (
        f"GET attempt 1 on {backend.url} failed: the response body broke off after 500000 "
        "bytes (the response ended early (500000 bytes read, 500000 more expected)); not "
        "retried: its response had begun to reach the client"))]
    middleware.close()
