"""Bodies stream both ways with bounded memory: 200 MB up and 200 MB down through the
gateway (in a subprocess, under each of its servers) grow its peak RSS by less than 50 MB,
even when the receiving side pauses before reading (a proxy without flow control would
buffer)."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.servers import read_request_head

SIZE = 200 * 1024 * 1024
BLOCK = bytes(range(256)) * 4096          # 1 MiB of a known pattern
MEMORY_BOUND = 50 * 1024 * 1024
PAUSE = 0.5          # seconds each slow reader waits before reading: time to fill any buffer


class StreamingBackend:
    """A loopback backend that never holds a body: ``POST`` bodies are counted and
    dropped (Content-Length or chunked), ``GET /N`` answers N bytes of ``BLOCK``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.pattern_ok = True
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb", buffering=1 << 20) as reader:
            while True:
                head = read_request_head(reader)
                if head is None:
                    return
                method, target = head.split(b" ", 2)[:2]
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if method == b"POST":
                    time.sleep(PAUSE)          # a slow reader: the proxy must not buffer
                    if length:
                        count = self._drain(reader, int(length.group(1)))
                    else:
                        count = self._drain_chunked(reader)
                    self.received = count
                    body = str(count).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                else:
                    size = int(target.strip(b"/") or 0)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    view = memoryview(BLOCK)
                    while size:
                        part = view[: min(size, len(BLOCK))]
                        conn.sendall(part)
                        size -= len(part)

    def _drain(self, reader, length: int) -> int:
        count = 0
        while count < length:
            chunk = reader.read(min(1 << 20, length - count))
            if not chunk:
                break
            if count == 0 and chunk[:256] != BLOCK[:256]:
                self.pattern_ok = False
            count += len(chunk)
        return count

    def _drain_chunked(self, reader) -> int:
        count = 0
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                reader.readline()
                return count
            count += len(reader.read(size))
            reader.readline()

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()


def rss_peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) * 1024


def rss_now(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")          # resets VmHWM to the current RSS (Linux >= 4.0)


def upload(port: int, size: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size)
        view = memoryview(BLOCK)
        left = size
        while left:
            part = view[: min(left, len(BLOCK))]
            sock.sendall(part)
            left -= len(part)
        return read_response(sock)[1]


def download(port: int, size: int) -> tuple[int, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: gw\r\n\r\n" % size)
        head, first = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        time.sleep(PAUSE)                      # a slow reader: the proxy must not buffer
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        pattern_ok = first[:256] == BLOCK[:len(first[:256])]
        count = len(first)
        buffer = bytearray(1 << 20)
        while count < length:
            n = sock.recv_into(buffer)
            if not n:
                break
            count += n
        return count, pattern_ok


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    head, body = read_head(sock)
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


@pytest.fixture(scope="module", params=GATEWAY_SERVERS)
def streaming_gateway(request):
    backend = StreamingBackend()
    gateway = GatewayProcess({"LB_BACKENDS": backend.url, "LB_SERVER": request.param}).start()
    yield gateway, backend
    gateway.stop()
    backend.stop()


def test_200_mb_up_and_200_mb_down_keep_memory_bounded(streaming_gateway):
    gateway, backend = streaming_gateway
    assert upload(gateway.port, 4 << 20) == str(4 << 20).encode()     # warm up both ways
    assert download(gateway.port, 4 << 20)[0] == 4 << 20
    pid = gateway.proxy_pid
    baseline = rss_now(pid)
    reset_peak(pid)

    assert upload(gateway.port, SIZE) == str(SIZE).encode()
    assert backend.received == SIZE and backend.pattern_ok
    count, pattern_ok = download(gateway.port, SIZE)
    assert count == SIZE and pattern_ok

    growth = rss_peak(pid) - baseline
    print(f"peak RSS growth {growth / 2**20:.1f} MB")
    assert growth < MEMORY_BOUND, f"peak RSS grew by {growth / 2**20:.1f} MB"


def test_chunked_upload_streams_through(streaming_gateway):
    gateway, backend = streaming_gateway
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):
            sock.sendall(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK))
        sock.sendall(b"0\r\n\r\n")
        assert read_response(sock)[1] == str(8 * len(BLOCK)).encode()
