"""WSGILoadBalancer against real loopback backends (tests/support/servers.py): what is
particular to WSGI (what servers put in the environ: RAW_URI, a decoded chunked body,
Content-Length; the response iterable and its blocks; a shared balancer with the
middleware's own forwarding settings; the example app; websocket handshakes).

Most tests call the middleware in-process with a hand-built environ (wrapped in
``wsgiref.validate.validator`` where the response allows, so PEP 3333 is checked too); the
ones about what a real server does go through a threaded wsgiref server on port 0 with a
raw socket client. What every proxy front-end does is the proxy contract
(tests/contract/proxy_contract.py), run against this middleware by test_wsgi_contract.py.
"""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest

import lbmiddleware as lb
from lbmiddleware.wsgi import WSGILoadBalancer

from ..contract.client_drivers import UPLOAD, UnreadUpload
from ..support.http_client import raw_request
from ..support.raw_backends import RawBackend
from ..support.servers import BackendServer
from ..support.wsgi_client import call, environ_for
from ..support.wsgi_server import serve_wsgi

SHORT = {"connect_timeout": 1.0, "read_timeout": 0.3}


def in_flight(middleware: WSGILoadBalancer) -> list[int]:
    return [row["in_flight"] for row in middleware.balancer.stats()]


def received(server: BackendServer, index: int = -1) -> tuple[str, str, dict, bytes]:
    return server.received[index]


# -- what servers put in the environ -------------------------------------------------------

@pytest.mark.parametrize("raw, sent", [
    ("//evil.example/x", b"//evil.example/x"),
    ("/http://evil.example/x", b"/http://evil.example/x"),
    ("/\\evil.example/x", b"/%5Cevil.example/x"),      # urllib3 encodes the backslash
    ("/a%2Fb", b"/a%2Fb"),
])
def test_a_servers_raw_uri_goes_upstream_as_a_path(raw, sent):
    # one request, whose head the backend records byte for byte (http.server would
    # collapse a leading ``//`` before a test could see it)
    backend = RawBackend([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: 2\r\nConnection: close\r\n\r\nok"])
    try:
        middleware = WSGILoadBalancer(None, backends=[backend.url])
        result = call(middleware, environ_for(path=unquote(raw, "latin-1"), RAW_URI=raw))
        assert result.code == 200 and result.body == b"ok"
        request_line, *header_lines = backend.heads[0].split(b"\r\n")
        assert request_line == b"GET " + sent + b" HTTP/1.1"
        assert b"Host: " + backend.url.removeprefix("http://").encode() in header_lines
    finally:
        backend.stop()


def test_content_length_with_transfer_encoding_is_refused_when_the_server_cannot_delimit_it(
        backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    with serve_wsgi(middleware) as port:
        status, _, body = raw_request(
            port, b"POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    assert status == 400 and body.startswith(b"400 Bad Request: ")
    assert a.requests == 0


def test_a_chunked_body_the_server_decoded_goes_upstream_with_one_framing(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    environ = environ_for("POST", "/x", body=b"hello world",
                          headers={"Transfer-Encoding": "chunked"})
    environ["wsgi.input_terminated"] = True          # as gunicorn says for a decoded body
    result = call(middleware, environ)
    _, _, headers, got = received(a)
    assert result.code == 200 and got == b"hello world"
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers


def test_a_bad_content_length_is_refused(backends):
    middleware = WSGILoadBalancer(None, backends=[backends[0].url])
    result = call(middleware, environ_for("POST", CONTENT_LENGTH="12abc"), validate=False)
    assert result.code == 400
    assert backends[0].requests == 0


# -- the response ------------------------------------------------------------

def test_a_backend_dying_between_head_and_body_is_retried(backends):
    a, b, c = backends
    a.behaviour = "head_only"
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], **SHORT)
    result = call(middleware, environ_for())
    assert result.code == 200 and result.json()["server"] == "b"
    assert a.requests == 1 and in_flight(middleware) == [0, 0]
    stats = {row["url"]: row for row in middleware.balancer.stats()}
    assert stats[a.url]["failures"] == 1


def test_a_slow_body_is_passed_on_as_it_arrives(backends):
    a = backends[0]
    a.behaviour, a.body_size = "pause_body", 100_000
    middleware = WSGILoadBalancer(None, backends=[a.url], **SHORT)
    captured = {}
    iterable = middleware(environ_for(), lambda status, headers: captured.update(status=status))
    try:
        chunks = iter(iterable)
        first = next(chunks)                 # the backend holds the second half back
        assert captured["status"] == "200 OK"
        assert first == b"x" * len(first) and 0 < len(first) <= 50_000
        a.release.set()
        assert len(first) + sum(len(chunk) for chunk in chunks) == 100_000
    finally:
        a.release.set()
        getattr(iterable, "close", lambda: None)()
    assert in_flight(middleware) == [0]


def test_chunk_size_is_the_size_of_the_response_blocks(backends):
    a = backends[0]
    a.body_size = 100_000
    middleware = WSGILoadBalancer(None, backends=[a.url], chunk_size=1000)
    iterable = middleware(environ_for(), lambda status, headers: None)
    try:
        blocks = [len(block) for block in iterable]
    finally:
        getattr(iterable, "close", lambda: None)()
    assert sum(blocks) == 100_000
    assert max(blocks) == 1000 and len(blocks) >= 100    # the first block too (the prefetch)
    assert in_flight(middleware) == [0]


# -- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("deadline", [None, 0.5])
def test_an_upload_the_backend_stops_reading_is_answered_504(deadline):
    """The backend reads the head of a 32 MiB PUT and none of its body. The upload is given
    up as a timeout, 504 (as the ASGI middleware answers it): after the 0.5 s read timeout
    without a deadline (not the 5 s connect timeout), after the 0.5 s deadline with one (its
    read timeout 5 s)."""
    backend = UnreadUpload()
    limits = ({"read_timeout": 0.5} if deadline is None
              else {"timeout": deadline, "read_timeout": 5})
    middleware = WSGILoadBalancer(None, backends=[backend.url], connect_timeout=5, **limits)
    try:
        started = time.monotonic()
        result = call(middleware, environ_for("PUT", body=b"x" * UPLOAD))
        took = time.monotonic() - started
        assert result.code == 504, result.body
        assert result.body == b"504 Gateway Timeout: the backend did not answer in time\n"
        assert took < 0.5 + 1.0, f"the upload was given up after {took:.2f} s"
        assert backend.requests == 1
        (row,) = middleware.balancer.stats()
        assert (row["requests"], row["failures"], row["in_flight"]) == (1, 1, 0)
    finally:
        middleware.close()
        backend.stop()


def test_a_shared_balancer_with_the_middlewares_own_forwarding_settings(backends):
    a, b, _ = backends
    a.status = 503
    pool = lb.Balancer([a.url, b.url], max_fails=0)
    once = WSGILoadBalancer(None, balancer=pool, retries=0, read_timeout=2)
    twice = WSGILoadBalancer(None, balancer=pool, retries=1)
    assert (once.forwarding.retries, once.adapter.settings.retries) == (0, 0)
    assert once.adapter.settings.read_timeout == 2.0 and twice.adapter.settings.retries == 1
    codes = [call(once, environ_for()).code for _ in range(4)]
    assert sorted(codes) == [200, 200, 503, 503]            # a's 503s come back, not retried
    served = [call(twice, environ_for()).json()["server"] for _ in range(4)]
    assert served == ["b"] * 4                              # a's 503s retried on b
    assert a.requests >= 3                                  # twice did get some of a's 503s


@pytest.mark.parametrize("chunk_size", [0, -1, "big"])
def test_a_bad_chunk_size_is_a_config_error(backends, chunk_size):
    with pytest.raises(lb.ConfigError, match=f"chunk_size has value {chunk_size!r}"):
        WSGILoadBalancer(None, backends=[backends[0].url], chunk_size=chunk_size)


def test_exported_lazily_from_the_package():
    assert lb.WSGILoadBalancer is WSGILoadBalancer


def test_the_example_app_serves_its_page_and_proxies_api(backends):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "wsgi_app.py"
    spec = importlib.util.spec_from_file_location("wsgi_app_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    app = example.make_app(environ={"LB_BACKENDS": ",".join(s.url for s in backends)})
    assert call(app, environ_for(path="/")).body.startswith(b"This page comes from the app")
    served = [call(app, environ_for(path="/api/items")).json()["server"] for _ in range(3)]
    assert served == ["a", "b", "c"]


def test_a_websocket_handshake_is_refused_with_501_and_never_forwarded(backends):
    middleware = WSGILoadBalancer(None, backends=[backends[0].url])
    result = call(middleware, environ_for(path="/chat", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}))
    assert result.code == 501 and b"WebSockets are not proxied" in result.body
    assert backends[0].requests == 0
