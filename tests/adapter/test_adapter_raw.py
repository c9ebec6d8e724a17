"""The adapter (and the WSGI middleware built on it) against raw-socket backends writing
exact bytes, with pauses, so that a test controls what arrives when.

Interim (1xx) responses: ``http.client`` skips only ``100 Continue``; any other 1xx used to
come back as the final response, and the real one stayed on the pooled connection for the
next caller to read. The real response here arrives only after a pause (as a slow backend
would send it). The WSGI middleware is tested under real servers (gunicorn and waitress,
subprocesses serving on a socket bound here to a port chosen by the OS).
"""

from __future__ import annotations

import gzip
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from lbmiddleware.adapter import LoadBalancingAdapter

from ..support.processes import stop_process
from ..support.raw_backends import ok
from ..support.servers import RawServer, read_request_head

VHOST = "http://svc"
PAUSE = 0.2         # between an interim response and the rest: the client must wait it out

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"


def session_for(url: str, **options) -> requests.Session:
    session = requests.Session()
    session.mount(VHOST + "/", LoadBalancingAdapter([url], pool_maxsize=1, **options))
    return session


# -- the adapter ---------------------------------------------------------------------------

@pytest.mark.parametrize("interim", [
    [EARLY_HINTS],
    [PROCESSING, EARLY_HINTS, EARLY_HINTS],
    [CONTINUE, EARLY_HINTS],
], ids=["103", "102-103-103", "100-103"])
@pytest.mark.parametrize("stream", [False, True])
def test_interim_responses_are_skipped_and_never_reach_the_next_caller(raw_backend, interim,
                                                                       stream):
    backend = raw_backend([*interim, PAUSE, ok(b"one")], [ok(b"two")])
    session = session_for(backend.url)
    first = session.get(f"{VHOST}/1", stream=stream)
    assert (first.status_code, first.content) == (200, b"one")
    second = session.get(f"{VHOST}/2")
    assert (second.status_code, second.content) == (200, b"two")
    assert backend.connections == 1            # the connection was reused, and in step


def test_interim_responses_arriving_with_the_final_one_are_skipped(raw_backend):
    backend = raw_backend([EARLY_HINTS + PROCESSING + ok(b"one")], [ok(b"two")])
    session = session_for(backend.url)
    assert session.get(f"{VHOST}/1").content == b"one"
    assert session.get(f"{VHOST}/2").content == b"two"
    assert backend.connections == 1


def test_interim_responses_are_skipped_over_https(raw_backend, certificate):
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    backend = raw_backend([EARLY_HINTS, PAUSE, ok(b"one")], [ok(b"two")], tls=tls)
    session = session_for(backend.url)
    assert session.get(f"{VHOST}/1", verify=cert).content == b"one"
    assert session.get(f"{VHOST}/2", verify=cert).content == b"two"
    assert backend.connections == 1


def test_interim_responses_are_skipped_through_a_proxy(raw_backend):
    proxy = raw_backend([EARLY_HINTS, PAUSE, ok(b"one")], [ok(b"two")])   # answers as a proxy
    session = session_for("http://127.0.0.1:9")
    proxies = {"http": proxy.url}
    assert session.get(f"{VHOST}/1", proxies=proxies).content == b"one"
    assert session.get(f"{VHOST}/2", proxies=proxies).content == b"two"
    assert proxy.heads[0].startswith(b"GET http://127.0.0.1:9/1 ")
    assert proxy.connections == 1


def test_an_unrequested_101_fails_the_attempt_and_closes_its_connection(raw_backend):
    backend = raw_backend([SWITCHING, PAUSE, b"bytes of another protocol"], [ok(b"second")])
    adapter = LoadBalancingAdapter([backend.url], pool_maxsize=1)
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    with pytest.raises(requests.ConnectionError) as info:
        session.get(f"{VHOST}/1")
    assert "101" in str(info.value) and backend.url in str(info.value)
    assert adapter.balancer.stats()[0]["failures"] == 1
    second = session.get(f"{VHOST}/2")
    assert (second.status_code, second.content) == (200, b"second")
    assert backend.connections == 2            # the switched connection was not reused


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 999 Nope", b"HTTP/1.1 600 Nope",
                                         b"HTTP/1.1 099 Nope"])
def test_a_status_outside_100_to_599_fails_the_attempt_and_closes_its_connection(
        raw_backend, status_line):
    backend = raw_backend([status_line + b"\r\nContent-Length: 0\r\n\r\n"], [ok(b"second")])
    adapter = LoadBalancingAdapter([backend.url], pool_maxsize=1)
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    with pytest.raises(requests.ConnectionError) as info:
        session.get(f"{VHOST}/1")
    assert status_line[9:12].decode() in str(info.value) and backend.url in str(info.value)
    assert adapter.balancer.stats()[0]["failures"] == 1
    second = session.get(f"{VHOST}/2")
    assert (second.status_code, second.content) == (200, b"second")
    assert backend.connections == 2


def test_wsgi_answers_a_status_outside_100_to_599_with_502(raw_backend, wsgi_server):
    backend = raw_backend([b"HTTP/1.1 999 Nope\r\nContent-Length: 0\r\n\r\n"], [ok(b"second")])
    url = wsgi_server(backend.url)
    assert requests.get(url + "/1", timeout=10).status_code == 502
    second = requests.get(url + "/2", timeout=10)
    assert (second.status_code, second.content) == (200, b"second")


@pytest.mark.parametrize("field", [b"X-Bad: a\x01b", b"X-Bad: a\x7fb", b"X-Bad: a\x1bb"])
def test_a_control_character_in_a_response_header_fails_the_attempt(raw_backend, field):
    backend = raw_backend([b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 0\r\n\r\n"],
                          [ok(b"second")])
    adapter = LoadBalancingAdapter([backend.url], pool_maxsize=1)
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    with pytest.raises(requests.ConnectionError, match="control character"):
        session.get(f"{VHOST}/1")
    assert adapter.balancer.stats()[0]["failures"] == 1
    second = session.get(f"{VHOST}/2")
    assert (second.status_code, second.content) == (200, b"second")
    assert backend.connections == 2


def test_wsgi_answers_a_control_character_in_a_response_header_with_502(raw_backend, wsgi_server):
    backend = raw_backend([b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n"],
                          [ok(b"second")])
    url = wsgi_server(backend.url)
    first = requests.get(url + "/1", timeout=10)
    assert first.status_code == 502 and "X-Bad" not in first.headers
    second = requests.get(url + "/2", timeout=10)
    assert (second.status_code, second.content) == (200, b"second")


def test_an_endless_run_of_interim_responses_is_refused(raw_backend):
    backend = raw_backend([EARLY_HINTS * 1000])
    with pytest.raises(requests.ConnectionError, match="interim"):
        session_for(backend.url).get(f"{VHOST}/")


# -- an answer that arrives while the body is still being sent ------------------------------

TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large"
UPLOAD = b"x" * (30 << 20)          # far more than the socket buffers hold


class EarlyAnswer(RawServer):
    """Reads only the request head, answers ``TOO_LARGE`` at once (keeping the connection
    open, as a keep-alive backend may) and never reads the body."""

    def handle(self, conn: socket.socket, number: int) -> None:
        if read_request_head(conn.makefile("rb")) is not None:
            conn.sendall(TOO_LARGE)
            self.stopping.wait()


@pytest.fixture
def early_answer() -> Iterator[EarlyAnswer]:
    backend = EarlyAnswer()
    yield backend
    backend.stop()


def test_an_early_413_during_a_large_upload_is_delivered_at_once_and_is_no_failure(early_answer):
    adapter = LoadBalancingAdapter([early_answer.url], connect_timeout=3.0, read_timeout=3.0)
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    for _ in range(4):                                  # one more than max_fails
        started = time.monotonic()
        response = session.post(f"{VHOST}/upload", data=UPLOAD)
        elapsed = time.monotonic() - started
        assert (response.status_code, response.content) == (413, b"too large")
        assert elapsed < 1.5, f"the 413 took {elapsed:.2f} s (timeouts 3 s)"
    (stats,) = adapter.balancer.stats()
    assert stats["failures"] == 0 and stats["ejections"] == 0 and stats["in_flight"] == 0
    assert early_answer.connections == 4    # a connection with an unfinished upload is not reused


class InterimThenReadsBody(RawServer):
    """Answers ``interim`` right after the head, then reads the whole body (by its
    Content-Length) and answers 200 with the number of body bytes it read."""

    def __init__(self, interim: bytes) -> None:
        self.interim = interim
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        while (head := read_request_head(reader)) is not None:
            conn.sendall(self.interim)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            got = str(len(reader.read(length))).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got), got))


@pytest.mark.parametrize("interim", [CONTINUE, EARLY_HINTS, CONTINUE + EARLY_HINTS])
def test_an_interim_response_during_an_upload_lets_the_body_go_on(interim):
    backend = InterimThenReadsBody(interim)
    try:
        session = session_for(backend.url)
        for _ in range(2):
            response = session.post(f"{VHOST}/upload", data=UPLOAD)
            assert (response.status_code, response.content) == (200, str(len(UPLOAD)).encode())
        assert backend.connections == 1
    finally:
        backend.stop()


def test_wsgi_answers_an_early_413_at_once(early_answer, wsgi_server):
    url = wsgi_server(early_answer.url)
    for _ in range(4):
        started = time.monotonic()
        response = requests.post(url + "/upload", data=UPLOAD, timeout=10)
        assert (response.status_code, response.content) == (413, b"too large")
        assert time.monotonic() - started < 2.5      # the connect timeout there is 5 s


# -- the body is read inside the attempt, and decoded after it ----------------------------

def test_a_redirect_whose_body_fails_to_decode_is_followed(raw_backend):
    # requests tolerates a false Content-Encoding on a redirect it follows
    # (its test_redirect_with_wrong_gzipped_header)
    backend = raw_backend([b"HTTP/1.1 302 Found\r\nLocation: /next\r\nContent-Encoding: gzip\r\n"
                           b"Content-Length: 9\r\n\r\nnot gzip!"], [ok(b"final")])
    adapter = LoadBalancingAdapter([backend.url])
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    response = session.get(f"{VHOST}/start")
    assert (response.status_code, response.content) == (200, b"final")
    assert response.history[0].status_code == 302 and response.url == f"{VHOST}/next"
    assert adapter.balancer.stats()[0]["failures"] == 0


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_elapsed_is_the_time_to_the_response_head(raw_backend, encoding):
    body = gzip.compress(b"abcd") if encoding else b"abcd"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    if encoding:
        head += b"Content-Encoding: gzip\r\n"
    backend = raw_backend([head + b"\r\n" + body[:2], 0.4, body[2:]])
    started = time.perf_counter()
    response = session_for(backend.url).get(f"{VHOST}/")
    assert response.content == b"abcd" and time.perf_counter() - started >= 0.4
    assert response.elapsed.total_seconds() < 0.25          # requests: "unaffected by
                                                            # consuming the response content"


# -- the WSGI middleware under real servers -----------------------------------------------

def _gunicorn(fd: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", "--workers", "1",
            "--threads", "4", "--log-level", "warning", "lbmiddleware.wsgi:WSGILoadBalancer()"]


def _waitress(fd: int) -> list[str]:
    code = ("import socket, sys, waitress; from lbmiddleware.wsgi import WSGILoadBalancer; "
            "waitress.serve(WSGILoadBalancer(), sockets=[socket.socket(fileno=int(sys.argv[1]))],"
            " threads=4, _quiet=True)")
    return [sys.executable, "-c", code, str(fd)]


@pytest.fixture(params=[_gunicorn, _waitress], ids=["gunicorn", "waitress"])
def wsgi_server(request) -> Iterator:
    """Start the middleware (every setting from LB_* variables) under a real WSGI server
    for a backend URL; yields the server's base URL. Stopped after the test."""
    started: list[tuple[subprocess.Popen, socket.socket]] = []

    def start(backend_url: str) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        environ = {**os.environ, "LB_BACKENDS": backend_url, "LB_READ_TIMEOUT": "3"}
        process = subprocess.Popen(request.param(listener.fileno()), pass_fds=[listener.fileno()],
                                   env=environ, stdout=subprocess.DEVNULL)
        started.append((process, listener))
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for process, listener in started:
        stop_process(process, 5)
        listener.close()


def test_wsgi_clients_get_their_own_final_responses(raw_backend, wsgi_server):
    backend = raw_backend([EARLY_HINTS, PAUSE, ok(b"one")], [ok(b"two")])
    url = wsgi_server(backend.url)
    first = requests.get(url + "/1", timeout=10)
    assert (first.status_code, first.content) == (200, b"one")
    second = requests.get(url + "/2", timeout=10)
    assert (second.status_code, second.content) == (200, b"two")


def test_wsgi_answers_an_unrequested_101_with_502(raw_backend, wsgi_server):
    backend = raw_backend([SWITCHING, PAUSE, b"bytes of another protocol"], [ok(b"second")])
    url = wsgi_server(backend.url)
    first = requests.get(url + "/1", timeout=10)
    assert first.status_code == 502
    second = requests.get(url + "/2", timeout=10)
    assert (second.status_code, second.content) == (200, b"second")
    assert backend.connections == 2
