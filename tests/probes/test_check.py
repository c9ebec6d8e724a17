"""One probe on real loopback servers: what it sends, what passes, and the reason it gives
for each way a backend can fail (refused, silent, closed, not HTTP, a bad certificate)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time

import pytest

import lbmiddleware as lb
from lbmiddleware.probes import HealthCheck

from ..support.raw_backends import CLOSE, OK
from ..support.servers import BackendServer, RawServer, refused_url


def probe(backend, path="/healthz", statuses=((200, 399),), timeout=1.0, ssl=None):
    """One probe by a check of its own, closed after (no connection kept)."""
    check = HealthCheck(path, statuses, timeout, ssl=ssl)

    async def once():
        try:
            return await check(backend)
        finally:
            check.close()

    return asyncio.run(once())


def head_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


def status(code: int) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code


class Silent(RawServer):
    """Accepts connections and never sends a byte (reads until the client leaves)."""

    def handle(self, conn, number):
        while not self.stopping.is_set():
            try:
                conn.settimeout(0.05)
                if not conn.recv(4096):
                    return
            except TimeoutError:
                continue


@pytest.fixture(scope="module")
def named_certificate(tmp_path_factory):
    """A self-signed certificate for the DNS name orders.internal only: ``(cert, key)``."""
    folder = tmp_path_factory.mktemp("probe-tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=orders.internal", "-addext", "subjectAltName=DNS:orders.internal",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    return cert, key


def test_an_absolute_path_is_sent_as_it_is_with_host_and_no_connection_close(raw_backend):
    server = raw_backend([OK])
    assert probe(lb.Backend(server.url + "/base")) == (True, "status 200")
    lines = head_lines(server.heads[0])
    assert lines[0] == b"GET /healthz HTTP/1.1"             # the base path not prefixed
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert not [line for line in lines if line.lower().startswith(b"connection:")]  # kept


def test_a_relative_path_is_appended_to_the_base_path(raw_backend):
    server = raw_backend([OK], [OK])
    assert probe(lb.Backend(server.url + "/base"), path="healthz?full=1")[0]
    assert probe(lb.Backend(server.url), path="healthz")[0]
    assert [head_lines(head)[0] for head in server.heads] == [
        b"GET /base/healthz?full=1 HTTP/1.1", b"GET /healthz HTTP/1.1"]


def test_a_path_outside_ascii_is_percent_encoded(raw_backend):
    server = raw_backend([OK])
    assert probe(lb.Backend(server.url), path="/santé?q=1")[0]
    assert head_lines(server.heads[0])[0] == b"GET /sant%C3%A9?q=1 HTTP/1.1"


def test_host_is_the_server_name_when_the_backend_has_one(raw_backend):
    server = raw_backend([OK])
    backend = lb.Backend(server.url, server_name="orders.internal")
    assert probe(backend)[0]
    assert f"Host: orders.internal:{server.port}".encode() in head_lines(server.heads[0])


def test_pass_is_a_status_in_the_ranges(raw_backend):
    server = raw_backend([status(503)], [status(399)], [status(400)], [status(204)],
                         [status(301)], [b"HTTP/1.1 100 Continue\r\n\r\n" + status(200)])
    backend = lb.Backend(server.url)
    assert probe(backend) == (False, "status 503")
    assert probe(backend) == (True, "status 399")
    assert probe(backend) == (False, "status 400")
    only = ((200, 200), (204, 204))
    assert probe(backend, statuses=only) == (True, "status 204")
    assert probe(backend, statuses=only) == (False, "status 301")
    assert probe(backend, statuses=only) == (True, "status 200")        # the interim skipped


def test_a_closed_port_is_connection_refused():
    assert probe(lb.Backend(refused_url())) == (False, "connection refused")


def test_a_backend_that_never_answers_fails_on_the_timeout():
    with BackendServer("hang") as server:
        server.behaviour = "hang"
        started = time.monotonic()
        result = probe(lb.Backend(server.url), timeout=0.2)
        elapsed = time.monotonic() - started
    assert result == (False, "timeout after 200ms")
    assert 0.19 <= elapsed < 0.6


def test_the_timeout_covers_the_tls_handshake_too():
    server = Silent()
    try:
        started = time.monotonic()
        result = probe(lb.Backend(f"https://127.0.0.1:{server.port}"), timeout=0.3)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert result == (False, "timeout after 300ms")
    assert elapsed < 0.8


def test_a_head_that_comes_after_the_timeout_fails(raw_backend):
    server = raw_backend([0.4, OK])
    assert probe(lb.Backend(server.url), timeout=0.25) == (False, "timeout after 250ms")


def test_a_backend_that_closes_without_answering_fails(scripted):
    server = scripted([CLOSE])
    assert probe(lb.Backend(server.url)) == (False, "the backend closed the connection")


def test_a_backend_that_does_not_speak_http_fails(raw_backend):
    server = raw_backend([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    ok, reason = probe(lb.Backend(server.url))
    assert not ok and "not HTTP/1.x" in reason


def test_the_status_decides_even_when_the_body_is_large_or_slow(raw_backend):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 300_000
    slow = [b"HTTP/1.1 503 X\r\nContent-Length: 10\r\n\r\n12345", 1.0, b"67890"]
    split = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", 0.05, b"67890"]
    server = raw_backend([big], slow, split)
    backend = lb.Backend(server.url)
    started = time.monotonic()
    assert probe(backend, timeout=0.5) == (True, "status 200")         # cut after 64 KiB
    assert time.monotonic() - started < 0.4
    started = time.monotonic()
    assert probe(backend, timeout=0.3) == (False, "status 503")        # cut at the deadline
    assert time.monotonic() - started < 0.6
    assert probe(backend, timeout=1.0) == (True, "status 200")         # drained to its end


def test_https_sends_the_server_name_and_verifies_the_certificate_against_it(
        raw_backend, named_certificate):
    cert, key = named_certificate
    names = []
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server_side.sni_callback = lambda sock, name, context: names.append(name)
    server = raw_backend([OK], [OK], [OK], tls=server_side)
    trusting = ssl.create_default_context(cafile=cert)
    named = lb.Backend(f"https://127.0.0.1:{server.port}", server_name="orders.internal")
    assert probe(named, ssl=trusting) == (True, "status 200")
    assert names == ["orders.internal"]
    assert f"Host: orders.internal:{server.port}".encode() in head_lines(server.heads[0])
    # The address alone does not match a certificate for the name.
    ok, reason = probe(lb.Backend(f"https://127.0.0.1:{server.port}"), ssl=trusting)
    assert not ok and reason.startswith("TLS: ") and "127.0.0.1" in reason
    # The system's trust store does not know a self-signed certificate.
    ok, reason = probe(named)
    assert not ok and reason.startswith("TLS: ") and "certificate" in reason


def test_a_name_that_does_not_resolve_fails_with_the_name():
    ok, reason = probe(lb.Backend("http://no-such-host.invalid:8080"), timeout=2.0)
    assert not ok and reason.startswith("cannot resolve no-such-host.invalid")


def test_cancelling_a_probe_closes_its_connection():
    with BackendServer("hang") as server:
        server.behaviour = "hang"

        async def scenario():
            check = HealthCheck("/healthz", ((200, 399),), 5.0)
            task = asyncio.create_task(check(lb.Backend(server.url)))
            deadline = time.monotonic() + 2
            while server.requests == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            task.cancel()
            await asyncio.wait([task])
            return task.cancelled()

        assert asyncio.run(scenario())
        # The server's handler still waits for its release; the probe's end is gone.
        (sock,) = server.open_sockets
        sock.settimeout(1.0)
        try:
            assert sock.recv(1, socket.MSG_PEEK) == b""         # EOF
        except ConnectionResetError:
            pass                                                # or a reset: closed either way
