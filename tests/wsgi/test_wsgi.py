"""WSGILoadBalancer against real loopback backends (tests/support/servers.py).

Most tests call the middleware in-process with a hand-built environ (wrapped in
``wsgiref.validate.validator`` where the response allows, so PEP 3333 is checked too); the
ones about what a real server does (framing, raw request targets, hop-by-hop headers,
concurrency) go through a threaded wsgiref server on port 0 with a raw socket client.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from urllib.parse import unquote

import pytest

import lbmiddleware as lb
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.http_client import raw_request
from ..support.raw_backends import RawBackend
from ..support.servers import BackendServer, refused_url
from ..support.wsgi_client import call, environ_for
from ..support.wsgi_server import serve_wsgi

SHORT = {"connect_timeout": 1.0, "read_timeout": 0.3}


def inner_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"inner app"]


def in_flight(middleware: WSGILoadBalancer) -> list[int]:
    return [row["in_flight"] for row in middleware.balancer.stats()]


def received(server: BackendServer, index: int = -1) -> tuple[str, str, dict, bytes]:
    return server.received[index]


# -- routing --------------------------------------------------------------------------------

def test_requests_under_the_prefix_are_proxied_and_others_go_to_the_app(backends):
    a, b, c = backends
    middleware = WSGILoadBalancer(inner_app, prefix="/api", backends=[a.url])
    for path in ("/api", "/api/", "/api/items"):
        result = call(middleware, environ_for(path=path))
        assert result.code == 200 and result.json()["server"] == "a"
        assert result.json()["path"] == path
    for path in ("/", "/apix", "/other/api"):
        result = call(middleware, environ_for(path=path))
        assert result.body == b"inner app"
    assert a.requests == 3


def test_without_an_app_other_paths_get_404(backends):
    middleware = WSGILoadBalancer(None, prefix="/api", backends=[backends[0].url])
    result = call(middleware, environ_for(path="/elsewhere"))
    assert result.code == 404
    assert result.body == b"404 Not Found: no route for this path\n"
    assert backends[0].requests == 0


def test_strip_prefix_removes_it_upstream(backends):
    middleware = WSGILoadBalancer(None, prefix="/api/", backends=[backends[0].url],
                                  strip_prefix=True)
    assert call(middleware, environ_for(path="/api/items/7", query="x=1")).json()["path"] == "/items/7?x=1"
    assert call(middleware, environ_for(path="/api")).json()["path"] == "/"


def test_backend_base_path_is_prefixed(backends):
    middleware = WSGILoadBalancer(None, backends=[backends[0].url + "/v1"])
    assert call(middleware, environ_for(path="/items", query="q=2")).json()["path"] == "/v1/items?q=2"


# -- what reaches the backend ----------------------------------------------------------------

def test_method_path_query_headers_and_body_arrive_unchanged(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    body = b'{"name": "caf\xc3\xa9"}'
    result = call(middleware, environ_for(
        "PUT", "/items/caf\xc3\xa9 1", query="a=1&b=%2F&c=%C3%A9&a=2", body=body,
        headers={"Content-Type": "application/json", "X-Request-Id": "r-1",
                 "Cookie": "session=abc; theme=dark", "Authorization": "Bearer t",
                 "User-Agent": "client/1.0", "Accept-Encoding": "gzip"}))
    assert result.code == 200
    method, path, headers, got = received(a)
    assert (method, path, got) == ("PUT", "/items/caf%C3%A9%201?a=1&b=%2F&c=%C3%A9&a=2", body)
    for name, value in [("Content-Type", "application/json"), ("X-Request-Id", "r-1"),
                        ("Cookie", "session=abc; theme=dark"), ("Authorization", "Bearer t"),
                        ("User-Agent", "client/1.0"), ("Accept-Encoding", "gzip"),
                        ("Content-Length", str(len(body)))]:
        assert headers[name] == value


def test_nothing_is_added_that_the_client_did_not_send(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    call(middleware, environ_for("GET", "/", CONTENT_TYPE="text/plain"))  # wsgiref's invention
    _, _, headers, _ = received(a)
    assert sorted(headers) == ["Host", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"]


def test_host_is_the_backends_unless_preserve_host(backends):
    a = backends[0]
    call(WSGILoadBalancer(None, backends=[a.url]), environ_for())
    assert received(a)[2]["Host"] == f"127.0.0.1:{a.port}"
    call(WSGILoadBalancer(None, backends=[a.url], preserve_host=True), environ_for())
    assert received(a)[2]["Host"] == "gateway.test"


def test_forwarded_headers_are_appended_and_set(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    call(middleware, environ_for(remote="192.0.2.10", headers={"X-Forwarded-For": "203.0.113.9"},
                                 **{"wsgi.url_scheme": "https"}))
    headers = received(a)[2]
    assert headers["X-Forwarded-For"] == "203.0.113.9, 192.0.2.10"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "gateway.test"


def test_hop_by_hop_and_connection_named_request_headers_are_not_forwarded(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    call(middleware, environ_for(headers={
        "Connection": "keep-alive, X-Secret", "X-Secret": "s", "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive", "TE": "trailers", "Trailer": "X-T", "Upgrade": "h2c",
        "X-Kept": "yes"}))
    names = {name.lower() for name in received(a)[2]}
    assert "x-kept" in names
    for name in ("connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer",
                 "upgrade", "transfer-encoding"):
        assert name not in names


# -- what reaches the client ---------------------------------------------------------------

def test_response_status_headers_and_body_arrive_unchanged(backends):
    a = backends[0]
    a.status = 201
    a.extra_headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                       ("X-Custom", "v")]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    result = call(middleware, environ_for("POST", "/things", body=b"x"))
    assert result.status == "201 Created"
    assert result.header("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert result.header("X-Custom") == ["v"] and result.header("X-Server") == ["a"]
    assert result.header("Content-Length") == [str(len(result.body))]
    assert result.json()["body"] == "x"


def test_hop_by_hop_response_headers_never_reach_the_wsgi_server(backends):
    a = backends[0]
    a.extra_headers = [("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
                       ("Proxy-Connection", "close"), ("Upgrade", "h2c"), ("Trailer", "X-T"),
                       ("X-End-To-End", "kept")]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    result = call(middleware, environ_for())
    names = {name.lower() for name, _ in result.headers}
    assert "x-end-to-end" in names
    assert not names & {"connection", "x-hop", "keep-alive", "proxy-connection", "upgrade",
                        "trailer", "transfer-encoding"}
    # wsgiref's start_response refuses hop-by-hop headers: through a real server it is a 200.
    with serve_wsgi(middleware) as port:
        status, headers, _ = raw_request(port, b"GET / HTTP/1.1\r\nHost: g\r\n\r\n")
    assert status == 200 and ("X-End-To-End", "kept") in headers


def test_redirects_and_head_are_passed_through(backends):
    a = backends[0]
    a.redirects = {"/old": "/new"}
    middleware = WSGILoadBalancer(None, backends=[a.url])
    result = call(middleware, environ_for(path="/old"), validate=False)   # no Content-Type
    assert result.code == 302 and result.header("Location") == ["/new"]
    assert a.requests == 1                                                 # not followed
    head = call(middleware, environ_for("HEAD", "/x"))
    assert head.code == 200 and head.body == b"" and head.header("X-Server") == ["a"]


# -- security --------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    (b"//evil.example/x", "/evil.example/x"),           # http.server collapses a leading //
    (b"/http://evil.example/x", "/http://evil.example/x"),
    (b"/\\evil.example/x", "/%5Cevil.example/x"),       # wsgiref decodes; encoded again
])
def test_paths_that_look_like_urls_never_change_the_host(backends, target, expected):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    with serve_wsgi(middleware) as port:
        status, _, body = raw_request(port, b"GET " + target + b" HTTP/1.1\r\nHost: g\r\n\r\n")
    assert status == 200
    echo = json.loads(body)
    assert echo["server"] == "a" and echo["path"] == expected
    assert echo["headers"]["Host"] == f"127.0.0.1:{a.port}"


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


@pytest.mark.parametrize("extra", [
    {"HTTP_X_EVIL": "a\r\nX-Injected: 1"},
    {"HTTP_X_EVIL": "a\nb"},
    {"HTTP_X_EVIL": "a\x00b"},
    {"QUERY_STRING": "a=1\r\nX-Injected: 1"},
])
def test_cr_lf_or_nul_in_a_header_or_the_query_is_refused_with_400(backends, extra):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url])
    result = call(middleware, environ_for(**extra))
    assert result.code == 400 and result.body.startswith(b"400 Bad Request: ")
    assert a.requests == 0


def test_content_length_with_transfer_encoding_is_refused_when_the_server_cannot_delimit_it(backends):
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
    environ = environ_for("POST", "/x", body=b"hello world", headers={"Transfer-Encoding": "chunked"})
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


# -- client IP and sticky key ----------------------------------------------------------------

def _homes(urls: list[str], keys: list[str]) -> dict[str, str]:
    """Each key's backend URL under ip_hash with every backend healthy (a fresh Balancer maps
    keys exactly as the middleware's: the hash is stable)."""
    reference = lb.Balancer(urls, policy="ip_hash")
    return {key: reference.lookup(key).url for key in keys}


def test_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(backends):
    urls = [s.url for s in backends]
    middleware = WSGILoadBalancer(None, backends=urls, policy="ip_hash")
    servers = Counter()
    for i in range(12):
        result = call(middleware, environ_for(remote="192.0.2.10",
                                              headers={"X-Forwarded-For": f"198.51.100.{i}"}))
        servers[result.json()["server"]] += 1
    home = next(s.name for s in backends if s.url == _homes(urls, ["192.0.2.10"])["192.0.2.10"])
    assert servers == {home: 12}


def test_forwarded_for_from_a_trusted_peer_gives_the_client_its_own_backend(backends):
    urls = [s.url for s in backends]
    middleware = WSGILoadBalancer(None, backends=urls, policy="ip_hash",
                                  trusted_proxies=["10.0.0.0/8"])
    names = {s.url: s.name for s in backends}
    clients = [f"198.51.100.{i}" for i in range(1, 13)]
    homes = _homes(urls, clients)
    seen = set()
    for client in clients:
        # a spoofed entry on the left, the real client added by the trusted proxy on the right
        result = call(middleware, environ_for(remote="10.0.0.1",
                                              headers={"X-Forwarded-For": f"6.6.6.6, {client}"}))
        echo = result.json()
        assert echo["server"] == names[homes[client]]
        assert echo["headers"]["X-Forwarded-For"] == f"6.6.6.6, {client}, 10.0.0.1"
        seen.add(echo["server"])
    assert seen == {"a", "b", "c"}


def test_hash_key_header_sticks_by_header(backends):
    urls = [s.url for s in backends]
    middleware = WSGILoadBalancer(None, backends=urls, policy="ip_hash", hash_key="header:X-User")
    users = ["alice", "bob", "carol", "dave"]
    homes = _homes(urls, users)
    names = {s.url: s.name for s in backends}
    for user in users:
        servers = {call(middleware, environ_for(remote=f"192.0.2.{i}", headers={"X-User": user}))
                   .json()["server"] for i in range(3)}
        assert servers == {names[homes[user]]}


# -- failures, retries and errors ------------------------------------------------------------

def test_every_backend_refusing_gives_502_with_a_short_body():
    middleware = WSGILoadBalancer(None, backends=[refused_url(), refused_url()], **SHORT)
    result = call(middleware, environ_for())
    assert result.code == 502
    assert result.body == b"502 Bad Gateway: no backend gave a response\n"
    assert in_flight(middleware) == [0, 0]


def test_a_backend_that_does_not_answer_in_time_gives_504(backends):
    a = backends[0]
    a.behaviour = "hang"
    middleware = WSGILoadBalancer(None, backends=[a.url], retries=0, **SHORT)
    result = call(middleware, environ_for())
    assert result.code == 504
    assert result.body == b"504 Gateway Timeout: the backend did not answer in time\n"
    assert in_flight(middleware) == [0]


def test_an_empty_pool_gives_503_with_retry_after(backends):
    middleware = WSGILoadBalancer(None, backends=[backends[0].url])
    middleware.balancer.update([])
    result = call(middleware, environ_for())
    assert result.code == 503
    assert result.header("Retry-After") == ["5"]
    assert result.body == b"503 Service Unavailable: no backend is available\n"


@pytest.mark.parametrize("behaviour", ["503", "close", "refused"])
def test_get_is_retried_on_another_backend(backends, behaviour):
    a, b, c = backends
    if behaviour == "503":
        a.status = 503
    elif behaviour == "close":
        a.behaviour = "close"
    else:
        a.stop()
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], **SHORT)
    result = call(middleware, environ_for())
    assert result.code == 200 and result.json()["server"] == "b"
    assert in_flight(middleware) == [0, 0]
    assert middleware.balancer.stats()[0]["failures"] == 1


def test_when_every_backend_answers_503_the_client_gets_the_last_one(backends):
    for server in backends:
        server.status = 503
    middleware = WSGILoadBalancer(None, backends=[s.url for s in backends])
    result = call(middleware, environ_for())
    assert result.code == 503 and result.header("X-Server") == ["c"]
    assert [s.requests for s in backends] == [1, 1, 1]


def test_post_is_not_retried_once_sent_but_a_connect_failure_is(backends):
    a, b, c = backends
    a.behaviour = "close"
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], **SHORT)
    result = call(middleware, environ_for("POST", body=b"order"))
    assert result.code == 502 and b.requests == 0
    a.stop()                                     # refused: nothing was sent, so retried
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], **SHORT)
    result = call(middleware, environ_for("POST", body=b"order"))
    assert result.code == 200 and result.json() == {**result.json(), "server": "b", "body": "order"}


def test_a_small_body_is_replayed_on_retry_a_large_one_is_not(backends):
    a, b, c = backends
    a.behaviour = "close"
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], retry_buffer=16, **SHORT)
    small = call(middleware, environ_for("PUT", body=b"0123456789abcdef"))
    assert small.code == 200 and small.json()["body"] == "0123456789abcdef"
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], retry_buffer=16, **SHORT)
    large = call(middleware, environ_for("PUT", body=b"0123456789abcdefg"))
    assert large.code == 502 and b.requests == 1          # only the small one reached b


def test_no_retry_once_the_response_has_started(backends):
    a, b, c = backends
    a.behaviour = "truncate"
    middleware = WSGILoadBalancer(None, backends=[a.url, b.url], **SHORT)
    captured = {}
    iterable = middleware(environ_for(), lambda status, headers: captured.update(status=status))
    assert captured["status"] == "200 OK"
    with pytest.raises(Exception):
        b"".join(iterable)
    iterable.close()
    assert b.requests == 0 and in_flight(middleware) == [0, 0]


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


def test_a_backend_killed_under_concurrent_load_costs_no_get_errors(backends):
    a, b, c = backends
    middleware = WSGILoadBalancer(None, backends=[s.url for s in backends], **SHORT)
    statuses: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(port: int) -> None:
        for _ in range(25):
            status, _, _ = raw_request(port, b"GET /load HTTP/1.1\r\nHost: g\r\n\r\n")
            with lock:
                statuses.append(status)
                if len(statuses) == 60:
                    done.set()

    with serve_wsgi(middleware) as port:
        threads = [threading.Thread(target=client, args=(port,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        assert done.wait(timeout=20)
        b.stop()                                   # killed mid-load: refused from now on
        for thread in threads:
            thread.join(timeout=30)
    assert len(statuses) == 200 and set(statuses) == {200}
    assert in_flight(middleware) == [0, 0, 0]
    stats = {row["url"]: row for row in middleware.balancer.stats()}
    assert stats[b.url]["state"] == "ejected"


# -- settings ----------------------------------------------------------------------------------

def test_settings_from_lb_variables(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(inner_app, environ={
        "LB_BACKENDS": a.url, "LB_PREFIX": "/api", "LB_STRIP_PREFIX": "yes",
        "LB_POLICY": "least_conn"})
    assert middleware.balancer.settings.policy == "least_conn"
    assert middleware.settings.prefix == "/api" and middleware.settings.strip_prefix is True
    assert call(middleware, environ_for(path="/api/x")).json()["path"] == "/x"
    assert call(middleware, environ_for(path="/x")).body == b"inner app"


@pytest.mark.parametrize("environ, message", [
    ({}, "LB_BACKENDS is not set"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRY_BUFFER": "lots"}, "LB_RETRY_BUFFER has value 'lots'"),
])
def test_bad_lb_variables_raise_config_error_naming_them(environ, message):
    with pytest.raises(lb.ConfigError, match=message):
        WSGILoadBalancer(None, environ=environ)


def test_a_shared_balancer(backends):
    pool = lb.Balancer([s.url for s in backends])
    first = WSGILoadBalancer(None, prefix="/one", balancer=pool)
    second = WSGILoadBalancer(None, prefix="/two", balancer=pool)
    served = [call(m, environ_for(path=p)).json()["server"]
              for m, p in [(first, "/one"), (second, "/two"), (first, "/one")]]
    assert served == ["a", "b", "c"]
    with pytest.raises(lb.ConfigError, match="policy given with balancer="):
        WSGILoadBalancer(None, balancer=pool, policy="random")


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
