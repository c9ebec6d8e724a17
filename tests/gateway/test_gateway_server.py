"""The gateway's HTTP server, attacked and stopped: ``python -m lbmiddleware serve`` under
each of its servers (the fast one, granian, uvicorn) in a subprocess, with loopback backends
and raw sockets. (What the fast server alone must hold on the wire: test_gateway_fast.py.)

Each gateway runs in its own session (process group), so a worker that freezes is killed
with its parent and never outlives the test.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.servers import BackendServer, RawServer, read_request_head


class Gateway(GatewayProcess):
    """A :class:`GatewayProcess` in a process group of its own, with bounded waits: the
    banner is awaited for ``timeout`` seconds, and ``terminate()`` reports how it ended."""

    def start(self, timeout: float = 15.0) -> Gateway:
        self.spawn(start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not self.read_banner(line):
            self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r}")
        return self

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``timeout`` s: ``(exit status or None, seconds)``."""
        began = time.monotonic()
        self.process.terminate()
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - began

    def stop(self) -> str:
        """Kill whatever is left of the process group; returns what it wrote on stderr."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.terminate(5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)     # a worker left behind, say
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(5)
        return self.finish()


def gateway_env(server: str, backends: str, **settings: str) -> dict[str, str]:
    return {"LB_SERVER": server, "LB_BACKENDS": backends, **settings}


# -- item 2: no thread alive across granian's fork ------------------------------------

class TLSBackend(BackendServer):
    """The echo backend behind TLS (https://127.0.0.1:PORT)."""

    def __init__(self, name: str, cert: str, key: str) -> None:
        super().__init__(name)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TLSBackend:
        super().start()         # nothing connects before the listening socket is wrapped
        self._server.socket = self.context.wrap_socket(self._server.socket, server_side=True)
        return self


STARTS = 5


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
@pytest.mark.parametrize("kind", ["localhost", "https"])
def test_a_backend_named_by_host_name_or_on_https_never_freezes_the_gateway(
        server, kind, certificate):
    """The granian parent once probed its port from a thread that imported
    ``encodings.idna`` while the worker was forked: the worker inherited the import lock
    held and froze on its first host name or TLS connection (about half the starts)."""
    cert, key = certificate
    backend = TLSBackend("a", cert, key) if kind == "https" else BackendServer("a")
    with backend:
        url = backend.url if kind == "https" else f"http://localhost:{backend.port}"
        # ssl.create_default_context() (the upstream client's) trusts SSL_CERT_FILE
        environ = gateway_env(server, url, LB_READ_TIMEOUT="2s", SSL_CERT_FILE=cert)
        failures: dict[int, list[str]] = {}
        for start in range(STARTS):
            gateway = Gateway(environ).start()
            try:
                try:
                    response = requests.get(f"{gateway.url}/x", timeout=3)
                    if response.status_code != 200 or response.json()["server"] != "a":
                        failures.setdefault(start, []).append(
                            f"{response.status_code} {response.text!r}")
                except requests.RequestException as exc:
                    failures.setdefault(start, []).append(type(exc).__name__)
                status, _ = gateway.terminate(5)
                if status is None:
                    failures.setdefault(start, []).append("still running 5 s after SIGTERM")
            finally:
                gateway.stop()
        assert not failures, f"{len(failures)} of {STARTS} starts failed: {failures}"


# -- item 6: a bounded grace period on SIGTERM -----------------------------------------

class EndlessStream(RawServer):
    """A loopback backend answering every request with a chunked body that never ends:
    a chunk every 0.1 s until the client leaves or ``stop()``, or for ``seconds`` (30 by
    default), after which the body ends."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        if read_request_head(conn.makefile("rb")) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        deadline = time.monotonic() + self.seconds
        while not self.stopping.wait(0.1) and time.monotonic() < deadline:
            conn.sendall(b"5\r\ntick\n\r\n")
        if not self.stopping.is_set():
            conn.sendall(b"0\r\n\r\n")


@pytest.fixture
def endless():
    backend = EndlessStream()
    yield backend
    backend.stop()


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_sigterm_ends_an_endless_stream_after_the_grace_period_and_exits_0(server, endless):
    environ = gateway_env(server, endless.url, LB_SHUTDOWN_TIMEOUT="1s")
    with Gateway(environ) as gateway, \
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        received = b""
        while b"tick" not in received:
            received += client.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        status, seconds = gateway.terminate(6)
        assert status == 0 and seconds < 5, (status, seconds)
        assert "Traceback" not in gateway.stop()
        client.settimeout(2)
        try:
            while client.recv(65536):       # the rest of what was sent, then the end
                pass
        except ConnectionResetError:
            pass


# -- item 9: chunked trailers are not request headers ----------------------------------

@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_chunked_trailer_never_reaches_the_backend_as_a_header(server, backends):
    with Gateway(gateway_env(server, backends[0].url)) as gateway, \
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\nX-Trailer-Smuggled: 1\r\n\r\n")
        reader = client.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
    (method, path, headers, body), = backends[0].received
    assert (method, path, body) == ("POST", "/upload", b"abc")
    assert "X-Trailer-Smuggled" not in headers and "x-trailer-smuggled" not in headers


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_an_http10_clients_expect_100_continue_is_ignored(server, backends):
    """RFC 9110 10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0
    request (HTTP/1.0 has no 1xx: such a client reads "100 Continue" as its answer); the
    body is read as the request's framing says and the answer is the backend's."""
    with Gateway(gateway_env(server, backends[0].url)) as gateway, \
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"POST /x HTTP/1.0\r\nHost: gw\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 3\r\n\r\nabc")
        status_line = client.makefile("rb").readline()
    # (granian answers a 1.0 client with an HTTP/1.0 status line, the others with 1.1)
    assert status_line.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")), status_line
    (method, path, _, body), = backends[0].received
    assert (method, path, body) == ("POST", "/x", b"abc")


# -- item 10: a bounded head time and a bounded number of client connections ------------

def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` while we send ``trickle`` (one
    byte every 0.1 s, as a slowloris client does)."""
    deadline = time.monotonic() + seconds
    sock.setblocking(False)
    sent = 0
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.1)[0]:
            try:
                return sock.recv(65536) == b""
            except ConnectionResetError:
                return True
        if sent < len(trickle):
            try:
                sock.send(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return True
            sent += 1
    return False


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_request_head_that_never_ends_is_closed_after_the_header_timeout(server, backends):
    with Gateway(gateway_env(server, backends[0].url, LB_HEADER_TIMEOUT="500ms")) as gateway:
        with socket.create_connection(("127.0.0.1", gateway.port)) as silent, \
                socket.create_connection(("127.0.0.1", gateway.port)) as slow:
            slow.sendall(b"GET /api/ HTTP/1.1\r\n")
            assert closed_within(slow, 2.5, trickle=b"X-Slow: " + b"a" * 100)
            assert closed_within(silent, 0.5)
        # a request sent in time is served
        assert requests.get(f"{gateway.url}/x", timeout=5).status_code == 200


def get_on(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One GET on a kept-alive connection: the response's status line, or b"" at EOF."""
    sock.settimeout(timeout)
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    received = b""
    try:
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    return received.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_connections_beyond_the_limit_are_turned_away_or_wait(server, backends):
    """uvicorn and the fast server answer 503 and close a connection beyond the limit;
    granian leaves it in the listen backlog (no file descriptor used) until a connection
    ends."""
    with Gateway(gateway_env(server, backends[0].url, LB_MAX_CONNECTIONS="5")) as gateway:
        address = ("127.0.0.1", gateway.port)
        clients = [socket.create_connection(address) for _ in range(5)]
        try:
            assert [get_on(c) for c in clients] == [b"HTTP/1.1 200 OK"] * 5
            with socket.create_connection(address) as sixth:
                if server in ("fast", "uvicorn"):
                    assert get_on(sixth) in (b"HTTP/1.1 503 Service Unavailable", b"")
                else:
                    with pytest.raises(socket.timeout):         # not accepted yet
                        get_on(sixth, timeout=0.5)
                assert [get_on(c) for c in clients] == [b"HTTP/1.1 200 OK"] * 5
                if server == "granian":
                    clients.pop().close()
                    sixth.settimeout(5)
                    assert sixth.recv(65536).startswith(b"HTTP/1.1 200 OK")
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_pipelined_partial_head_waits_for_the_response_before_its_header_timeout(server):
    """The head timer of a pipelined request starts once the response before it is
    complete: uvicorn's protocol once started it at the head's first byte, and a partial
    second head cut a streaming first response after the header timeout."""
    backend = EndlessStream(seconds=2.0)
    try:
        environ = gateway_env(server, backend.url, LB_HEADER_TIMEOUT="500ms")
        with Gateway(environ) as gateway, \
                socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
            client.sendall(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\nGET /x HTTP/1.1\r\n")
            received = b""
            deadline = time.monotonic() + 6
            while not received.endswith(b"0\r\n\r\n") and time.monotonic() < deadline:
                try:
                    chunk = client.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.endswith(b"tick\n\r\n0\r\n\r\n"), received[-60:]
            assert received.count(b"tick") >= 15        # ~2 s of chunks, none cut
            # the partial head, now on an idle connection, gets its own header timeout
            assert closed_within(client, 2.5)
    finally:
        backend.stop()


# -- uvicorn's warnings on every upgrade request -------------------------------------

UPGRADE_WARNINGS = ("Unsupported upgrade request", "No supported WebSocket library")


# uvicorn's protocol, which the fast server hands upgrade requests to (granian has no such
# warnings).
@pytest.mark.parametrize("server", ["fast", "uvicorn"])
def test_upgrade_requests_under_uvicorn_log_no_warnings(server, backends):
    """The proxy forwards a WebSocket handshake as one (a plain HTTP backend answers it
    200, passed on) and other upgrades (h2c) as plain requests: uvicorn's two warnings per
    such request would only flood the log."""
    a = backends[0]
    gateway = Gateway(gateway_env(server, a.url)).start()
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(b"GET /chat HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(b"GET /h2c HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\n"
                         b"Connection: Upgrade, HTTP2-Settings\r\n"
                         b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200 ")
    finally:
        errors = gateway.stop()
    assert not [w for w in UPGRADE_WARNINGS if w in errors], errors
    assert a.requests == 2 and [r[1] for r in a.received] == ["/chat", "/h2c"]
    assert a.received[0][2]["Upgrade"] == "websocket"


H2C = (b"%s /h2c HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n")


def answers_to(port: int, data: bytes) -> bytes:
    """What the gateway writes back for ``data`` (one write) until it closes (5 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


# The fast server only: it hands an upgrade's connection to uvicorn's protocol, head first,
# then the rest of that read. uvicorn's own (LB_SERVER=uvicorn) drops the bytes after an h2c
# head in the same read: uvicorn's, not the gateway's code.
def test_a_request_pipelined_after_an_h2c_head_in_the_same_write_is_served(backends):
    a = backends[0]
    gateway = Gateway(gateway_env("fast", a.url)).start()
    try:
        answers = answers_to(gateway.port, H2C % b"GET" + b"\r\n" + b"GET /next HTTP/1.1\r\n"
                             b"Host: gw\r\nConnection: close\r\n\r\n")
    finally:
        gateway.stop()
    assert [r[1] for r in a.received] == ["/h2c", "/next"]
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers


def test_an_h2c_posts_body_in_the_head_write_is_never_dropped_in_silence(backends):
    """An h2c upgrade with a body in the same write: the body is read as the next request
    (llhttp stops at an upgrade's head), so the client is answered 400, never a 200 for a
    POST forwarded without its body."""
    a = backends[0]
    gateway = Gateway(gateway_env("fast", a.url)).start()
    try:
        answers = answers_to(gateway.port, H2C % b"POST" + b"Content-Length: 5\r\n\r\nhello")
    finally:
        gateway.stop()
    assert b"hello" in [r[3] for r in a.received] or b"HTTP/1.1 400 " in answers, answers
