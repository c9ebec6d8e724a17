"""The proxy contract: what every proxy front-end does with a request, written once.

:class:`ProxyContract` is a mixin of tests (cachetools' way: one suite, every
implementation). A test module makes it run against one front-end::

    class TestASGIMiddleware(ProxyContract):
        front_end_class = ASGIFrontEnd

It runs against the ASGI middleware (tests/asgi), the WSGI middleware (tests/wsgi) and the
gateway process (tests/gateway). Each test drives a front-end through the small interface
of tests/contract/drivers.py (start a proxy in front of real loopback backends with given
settings; send a request or raw bytes; read status, headers, body) and checks what reached
the backends (tests/support/servers.py echoes it) and what came back. Where a front-end
legitimately differs, the test branches on a documented attribute of its driver class
(``wraps_an_app``, ``sees_balancer``, ``keeps_raw_target`` ...), never by dropping a check.
A test that cannot apply to a front-end at all (the gateway wraps no application) says so
with :func:`needs`: it is not collected for that front-end (tests/conftest.py deselects it),
rather than skipped.

What is particular to one front-end (ASGI scopes and lifespan, WSGI environ keys and
servers, the gateway's servers and process) stays in that front-end's own test modules.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import lbmiddleware as lb
from lbmiddleware.core.sticky import sticky_value

from ..support.redirect_backend import RedirectBackend
from ..support.servers import refused_url
from .client_drivers import TricklingHead
from .drivers import HOST, LOCAL, FrontEnd


def needs(applies: Callable[[type[FrontEnd], dict[str, Any]], bool], what: str,
          ) -> pytest.MarkDecorator:
    """Mark a test that applies only to front-ends for which ``applies(front_end_class,
    params)`` holds (``params``: the test's parametrization); ``what`` says what it needs."""
    return pytest.mark.needs(applies, what)


SHORT = {"connect_timeout": 1.0}        # a refused or dead backend is noticed at once


def owner_of(backends, key: str) -> str:
    """The URL of the backend that owns ``key`` under ip_hash, every backend healthy (the
    hash is stable: a fresh Balancer maps keys as the proxy's does)."""
    return lb.Balancer([b.url for b in backends], policy="ip_hash").lookup(key).url


def by_url(backends) -> dict[str, str]:
    return {b.url: b.name for b in backends}


def url_of(backends, name: str) -> str:
    return next(b.url for b in backends if b.name == name)


def settled(proxy) -> dict[str, dict]:
    """The balancer's rows once nothing is in flight: a server sends a response's last byte
    before the middleware ends its attempt (the gateway's rows are read from its admin port,
    which does not wait for that)."""
    deadline = time.monotonic() + 5
    while True:
        rows = proxy.stats()
        if not any(row["in_flight"] for row in rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


class ProxyContract:
    """The tests every proxy front-end passes; ``front_end_class`` says which one."""

    front_end_class: type[FrontEnd]

    @pytest.fixture
    def front(self):
        front_end = self.front_end_class()
        yield front_end
        front_end.stop()

    # -- routing -----------------------------------------------------------------------------

    @needs(lambda front, params: front.wraps_an_app,
           "a front-end that wraps no application (its 404 is the next test)")
    def test_requests_under_the_prefix_are_proxied_and_others_go_to_the_app(self, front,
                                                                              backends):
        a = backends[0]
        proxy = front.start([a], app=True, prefix="/api")
        for target in ("/api/users/7?full=1", "/api", "/api/", "/api/items"):
            response = proxy.request("GET", target)
            assert response.status == 200 and response.json()["server"] == "a"
            assert response.json()["path"] == target
        for target in ("/", "/apix", "/other/api"):
            assert proxy.request("GET", target).body == LOCAL
        assert a.requests == 4

    def test_without_an_app_other_paths_get_404(self, front, backends):
        proxy = front.start(backends[:1], prefix="/api")
        response = proxy.request("GET", "/elsewhere")
        assert response.status == 404
        assert response.body == b"404 Not Found: no route for this path\n"
        assert backends[0].requests == 0

    def test_strip_prefix_removes_it_from_the_upstream_path(self, front, backends):
        proxy = front.start(backends[:1], prefix="/api/", strip_prefix=True)
        paths = [proxy.request("GET", target).json()["path"]
                 for target in ("/api/users/7?q=1", "/api?q=1", "/api/?q=1", "/api/items/7?x=1",
                                "/api")]
        assert paths == ["/users/7?q=1", "/?q=1", "/?q=1", "/items/7?x=1", "/"]

    @pytest.mark.parametrize("settings, target, path", [
        ({"prefix": "/api", "strip_prefix": True}, "/api/x", "/v1/x"),
        ({}, "/items?q=2", "/v1/items?q=2"),
    ])
    def test_the_backends_base_path_is_kept(self, front, backends, settings, target, path):
        proxy = front.start([backends[0].url + "/v1"], **settings)
        assert proxy.request("GET", target).json()["path"] == path

    def test_a_dot_segment_path_cannot_reach_the_backend_outside_the_prefix(self, front,
                                                                            backends):
        a = backends[0]
        response = front.start([a], prefix="/api").request("GET", "/api/../admin")
        assert response.status == 404 and a.requests == 0

    # -- what reaches the backend --------------------------------------------------------------

    def test_method_path_query_headers_and_body_arrive_unchanged(self, front, backends):
        a = backends[0]
        proxy = front.start([a])
        body = b'{"name": "caf\xc3\xa9"}'
        query = "x=1&y=%20&a=1&b=%2F&c=%C3%A9&a=2"
        sent = [("Content-Type", "application/json"), ("X-Custom", "v1"), ("Accept", "*/*"),
                ("X-Request-Id", "r-1"), ("Cookie", "session=abc; theme=dark"),
                ("Authorization", "Bearer t"), ("User-Agent", "client/1.0"),
                ("Accept-Encoding", "gzip")]
        response = proxy.request("PUT", "/items/caf%C3%A9%201/a%2Fb?" + query, headers=sent,
                                 body=body)
        assert response.status == 200
        method, path, headers, received = a.received[-1]
        # wsgiref hands WSGI the decoded path: %2F is a / by then
        slash = "%2F" if front.keeps_raw_target else "/"
        assert (method, path, received) == ("PUT", f"/items/caf%C3%A9%201/a{slash}b?{query}", body)
        for name, value in sent:
            assert headers[front.forwarded_name(name)] == value
        assert headers["Content-Length"] == str(len(body))     # the proxy's own
        assert response.json()["body"] == body.decode("latin-1")
        assert headers["Host"] == f"127.0.0.1:{a.port}"
        assert headers["X-Forwarded-For"] == front.peer
        assert headers["X-Forwarded-Proto"] == "http"
        assert headers["X-Forwarded-Host"] == HOST

    def test_nothing_is_added_that_the_client_did_not_send(self, front, backends):
        """Only Host and the X-Forwarded-* headers are the proxy's (not wsgiref's invented
        Content-Type, not an HTTP client's Accept or User-Agent)."""
        a = backends[0]
        assert front.start([a]).request("GET", "/").status == 200
        _, _, headers, _ = a.received[-1]
        assert sorted(headers) == ["Host", "X-Forwarded-For", "X-Forwarded-Host",
                                   "X-Forwarded-Proto"]

    def test_host_is_the_backends_unless_preserve_host(self, front, backends):
        a = backends[0]
        assert front.start([a]).request("GET", "/").json()["headers"]["Host"] \
            == f"127.0.0.1:{a.port}"
        assert front.start([a], preserve_host=True).request("GET", "/").json()["headers"][
            "Host"] == HOST

    def test_forwarded_headers_are_appended_and_set(self, front, backends):
        a = backends[0]
        proxy = front.start([a])
        for scheme in front.schemes:
            proxy.request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.9")], scheme=scheme)
            headers = a.received[-1][2]
            assert headers["X-Forwarded-For"] == f"203.0.113.9, {front.peer}"
            assert headers["X-Forwarded-Proto"] == scheme
            assert headers["X-Forwarded-Host"] == HOST

    @pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
    def test_hop_by_hop_and_connection_named_headers_are_dropped_both_ways(self, front,
                                                                           backends, upgrade):
        a = backends[0]
        a.extra_headers = [("Connection", "X-Hop-Out"), ("X-Hop-Out", "1"),
                           ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "close"),
                           ("Upgrade", "h2c"), ("Trailer", "X-T"), ("X-Kept", "yes"),
                           ("X-End-To-End", "kept")]
        proxy = front.start([a])
        response = proxy.request("GET", "/", headers=[
            ("Connection", "keep-alive, X-Hop-In"), ("X-Hop-In", "secret"), ("Keep-Alive", "300"),
            ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
            ("Upgrade", upgrade), ("X-Kept", "yes")])
        assert response.status == 200
        sent = {name.lower() for name in response.json()["headers"]}
        for hop in ("connection", "x-hop-in", "keep-alive", "proxy-connection", "te", "trailer",
                    "upgrade", "transfer-encoding"):
            assert hop not in sent
        assert "x-kept" in sent
        # and through a real server (wsgiref's start_response refuses hop-by-hop headers)
        through_server = proxy.raw(b"GET / HTTP/1.1\r\nHost: g\r\n\r\n")
        assert through_server.status == 200
        if front.keeps_response_name_case:
            assert ("X-End-To-End", "kept") in through_server.headers
        for returned in (response, through_server):
            assert returned.header("x-kept") == ["yes"]
            assert returned.header("x-end-to-end") == ["kept"]
            assert not returned.names & {"x-hop-out", "proxy-connection", "upgrade", "trailer"}
            # a server on the wire adds its own Connection / Keep-Alive: never the backend's
            assert all("x-hop-out" not in v.lower() for v in returned.header("connection"))
            assert "timeout=5" not in returned.header("keep-alive")
        if not front.adds_connection_headers:
            assert not response.names & {"connection", "keep-alive", "transfer-encoding"}

    @pytest.mark.parametrize("target, rebuilt", [
        # rebuilt: what goes upstream when the server decoded the path (wsgiref: a leading
        # // collapsed, the rest encoded again)
        ("//evil.example/x", "/evil.example/x"),
        ("/http://evil.example/", "/http://evil.example/"),
        ("/http://evil.example/x", "/http://evil.example/x"),
        ("/\\evil.example", "/%5Cevil.example"),
        ("/\\evil.example/x", "/%5Cevil.example/x"),
        ("/@evil.example", "/@evil.example"),
        ("//user@evil.example:80/", "/user@evil.example:80/"),
    ])
    def test_paths_that_look_like_urls_reach_the_backend_as_paths(self, front, backends,
                                                                  target, rebuilt):
        a = backends[0]
        proxy = front.start([a])
        expected = target if front.keeps_raw_target else rebuilt
        for response in (proxy.request("GET", target),
                         proxy.raw(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: g\r\n\r\n")):
            assert response.status == 200
            seen = response.json()
            assert seen["server"] == "a" and a.request_lines[-1] == f"GET {expected} HTTP/1.1"
            assert seen["path"] == "/" + expected.lstrip("/")     # http.server collapses //
            assert seen["headers"]["Host"] == f"127.0.0.1:{a.port}"
        assert a.requests == 2

    @pytest.mark.parametrize("where, name, value", [
        ("header", "X-A", "v\r\nInjected: 1"),
        ("header", "X-A", "v\nInjected: 1"),
        ("header", "X-A", "v\x00"),
        ("header", "X-A", "a\x00b"),
        ("header", "X-A\r\nInjected", "1"),
        ("path", None, "/a\r\nHost: evil"),
        ("query", None, "x=1\r\nEvil: 1"),
        ("query", None, "a=1\r\nX-Injected: 1"),
    ])
    @needs(lambda front, params: front.carries_any_header_value
           or not ("\r" in params["value"] + (params["name"] or "") or "\n" in params["value"]),
           "on the wire, CR and LF end a line: only an in-process call can carry them")
    def test_cr_lf_or_nul_in_a_header_the_path_or_the_query_gets_400_and_nothing_is_sent(
            self, front, backends, where, name, value):
        a = backends[0]
        proxy = front.start([a])
        if where == "header":
            response = proxy.request("GET", "/", headers=[(name, value)])
        elif where == "path":
            response = proxy.request("GET", value)
            if not front.keeps_raw_target:
                # the path is encoded again from the server's decoded one: harmless
                assert response.status == 200
                assert a.request_lines == ["GET /a%0D%0AHost:%20evil HTTP/1.1"]
                return
        else:
            response = proxy.request("GET", "/a?" + value)
        assert response.status == 400 and a.requests == 0
        if front.refuses_nul_itself and where == "header":
            assert response.body == front.refusal_body       # the server's, before the proxy
        else:
            assert response.body.startswith(b"400 Bad Request: ")

    def test_a_large_streamed_body_arrives_whole(self, front, backends):
        a = backends[0]
        chunks = [bytes([65 + i]) * 50_000 for i in range(6)]
        response = front.start([a], retry_buffer=1024).request(
            "POST", "/", body=chunks, headers=[("Content-Length", str(300_000))])
        seen = response.json()
        assert seen["body"].encode() == b"".join(chunks)
        assert seen["headers"]["Content-Length"] == "300000"

    # -- what reaches the client ------------------------------------------------------------------

    @pytest.mark.parametrize("method, body, status, reason", [
        ("GET", b"", 418, None), ("POST", b"x", 201, "Created")])
    def test_status_headers_and_repeated_set_cookie_arrive_unchanged(self, front, backends,
                                                                     method, body, status,
                                                                     reason):
        a = backends[0]
        a.status = status
        a.extra_headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                           ("X-Multi", "1"), ("X-Multi", "2"), ("X-Custom", "v")]
        response = front.start([a]).request(method, "/things", body=body)
        assert response.status == status
        if reason is not None and response.reason is not None:     # ASGI has no phrase
            assert response.reason == reason
        assert response.header("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
        assert response.header("x-multi") == ["1", "2"]
        assert response.header("x-custom") == ["v"] and response.header("x-server") == ["a"]
        assert response.json()["server"] == "a" and response.json()["body"] == body.decode()
        assert response.header("content-length") == [str(len(response.body))]

    def test_redirects_and_head_are_passed_through(self, front, backends):
        a = backends[0]
        a.redirects = {"/old": "/new"}
        proxy = front.start([a])
        redirect = proxy.request("GET", "/old", checked=False)   # a 302 with no Content-Type
        assert redirect.status == 302 and redirect.header("location") == ["/new"]
        assert a.requests == 1                                      # not followed
        head = proxy.request("HEAD", "/x")
        assert head.status == 200 and head.body == b"" and head.complete
        assert head.header("x-server") == ["a"]

    # -- redirects stay on the proxy; the server in front says Date and Server ---------------

    @pytest.fixture
    def redirecting(self):
        """A backend building absolute URLs from the Host it got (see its module)."""
        with RedirectBackend("r") as backend:
            yield backend

    def test_a_backends_redirect_to_itself_comes_back_on_the_clients_address(self, front,
                                                                            redirecting):
        proxy = front.start([redirecting], prefix="/api")
        for scheme in front.schemes:
            origin = f"{scheme}://{HOST}"
            moved = proxy.request("GET", "/api/a/old?page=2", scheme=scheme, checked=False)
            assert moved.status == 302
            assert moved.header("location") == [f"{origin}/api/a/new?page=2"]
            created = proxy.request("GET", "/api/created", scheme=scheme)
            assert created.status == 201
            assert created.header("location") == [f"{origin}/api/items/7"]
            assert created.header("content-location") == [f"{origin}/api/items/7"]
            refresh = proxy.request("GET", "/api/b/refresh", scheme=scheme)
            assert refresh.header("refresh") == [f"3; url={origin}/api/b/later"]
        assert redirecting.requests == 3 * len(front.schemes)       # none followed

    def test_a_backends_base_path_is_taken_off_its_redirects(self, front, redirecting):
        proxy = front.start([redirecting.url + "/v1"], prefix="/api")
        moved = proxy.request("GET", "/api/old", checked=False)
        assert moved.json()["path"] == "/v1/api/old"
        assert moved.header("location") == [f"http://{HOST}/api/new"]

    def test_a_redirect_under_a_stripped_prefix_gets_the_prefix_back(self, front,
                                                                     redirecting):
        proxy = front.start([redirecting], prefix="/api", strip_prefix=True)
        moved = proxy.request("GET", "/api/a/old", checked=False)
        assert moved.json()["path"] == "/a/old"
        assert moved.header("location") == [f"http://{HOST}/api/a/new"]
        created = proxy.request("GET", "/api/created")
        assert created.header("content-location") == [f"http://{HOST}/api/items/7"]

    def test_redirects_from_a_trusted_proxy_go_to_the_address_its_client_used(self, front,
                                                                              redirecting):
        proxy = front.start([redirecting], trusted_proxies=[f"{front.proxy_peer}/32"])
        forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "public.example")]
        moved = proxy.request("GET", "/old", peer=front.proxy_peer, headers=forwarded,
                              checked=False)
        assert moved.header("location") == ["https://public.example/new"]
        # the same headers from anyone else change nothing
        moved = proxy.request("GET", "/old", headers=forwarded, checked=False)
        assert moved.header("location") == [f"http://{HOST}/new"]

    def test_relative_and_foreign_redirects_are_left_as_they_came(self, front, backends):
        a = backends[0]
        other = refused_url()
        a.redirects = {"/rel": "/new", "/other-port": f"{other}/x",
                       "/elsewhere": "https://login.example/authorize?next=/x",
                       "/other-scheme": f"https://127.0.0.1:{a.port}/x"}
        proxy = front.start([a])
        for path, location in a.redirects.items():
            moved = proxy.request("GET", path, checked=False)
            assert moved.status == 302 and moved.header("location") == [location]

    def test_the_backends_date_and_server_are_left_to_the_server_in_front(self, front,
                                                                         raw_backend):
        old_date = "Mon, 01 Jan 2001 00:00:00 GMT"
        answer = [b"HTTP/1.1 200 OK\r\nDate: " + old_date.encode()
                  + b"\r\nServer: backend/1.0\r\nX-Kept: 1\r\n"
                  b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"]
        backend = raw_backend(answer, answer)
        proxy = front.start([backend.url])
        response = proxy.request("GET", "/")
        assert response.status == 200 and response.body == b"ok"
        assert response.header("x-kept") == ["1"]
        assert old_date not in response.header("date")
        assert "backend/1.0" not in response.header("server")
        # one of each where a server in front adds its own, none in-process
        assert len(response.header("date")) == len(response.header("server")) == (
            1 if front.server_adds_date else 0)
        # under a real server (uvicorn, wsgiref, the gateway's): one of each, its own
        served = proxy.raw(b"GET / HTTP/1.1\r\nHost: front.example\r\n\r\n")
        assert served.status == 200 and served.body == b"ok"
        assert len(served.header("date")) == 1 and served.header("date") != [old_date]
        assert len(served.header("server")) == 1
        assert served.header("server") != ["backend/1.0"]

    # -- the client's address and sticky keys ---------------------------------------------------

    @pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)])
    def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing(
            self, front, backends, trusted):
        proxy = front.start(backends, policy="ip_hash", trusted_proxies=list(trusted))
        home = owner_of(backends, front.peer)
        for i in range(12):
            seen = proxy.request("GET", "/", headers=[("X-Forwarded-For", f"198.51.100.{i}")]
                                 ).json()
            assert by_url(backends)[home] == seen["server"]
            assert seen["headers"]["X-Forwarded-For"] == f"198.51.100.{i}, {front.peer}"

    def test_x_forwarded_for_from_a_trusted_peer_gives_the_client_its_own_backend(self, front,
                                                                                  backends):
        proxy = front.start(backends, policy="ip_hash",
                            trusted_proxies=["10.0.0.0/8", f"{front.proxy_peer}/32"])
        names = by_url(backends)
        seen_servers = set()
        # four clients owned by each backend (the ports, and so the owners, change per run:
        # twelve consecutive addresses miss a backend about once in 40 runs)
        owned: dict[str, list[str]] = {b.url: [] for b in backends}
        for i in range(1, 255):
            client = f"198.51.100.{i}"
            clients = owned[owner_of(backends, client)]
            if len(clients) < 4:
                clients.append(client)
        for client in [c for clients in owned.values() for c in clients]:
            # a spoofed entry on the left; the real client added by a trusted proxy, with
            # or without another trusted hop after it
            for forwarded in (f"6.6.6.6, {client}", f"6.6.6.6, {client}, 10.0.0.9"):
                seen = proxy.request("GET", "/", peer=front.proxy_peer,
                                     headers=[("X-Forwarded-For", forwarded)]).json()
                assert seen["server"] == names[owner_of(backends, client)]
                assert seen["headers"]["X-Forwarded-For"] == f"{forwarded}, {front.proxy_peer}"
                seen_servers.add(seen["server"])
        assert seen_servers == {"a", "b", "c"}       # the key really is the forwarded client

    @pytest.mark.parametrize("hash_key, header", [("header:X-User", ("X-User", "{}")),
                                                  ("cookie:sid", ("Cookie", "theme=dark; sid={}"))])
    def test_a_sticky_key_from_a_header_or_a_cookie(self, front, backends, hash_key, header):
        proxy = front.start(backends, policy="ip_hash", hash_key=hash_key)
        names = by_url(backends)
        servers: dict[str, set[str]] = {}
        for i in range(18):
            user = f"user-{i % 6}"
            seen = proxy.request("GET", "/", peer=front.client(i),
                                 headers=[(header[0], header[1].format(user))]).json()
            assert seen["server"] == names[owner_of(backends, user)]
            servers.setdefault(user, set()).add(seen["server"])
        assert all(len(found) == 1 for found in servers.values())

    # -- retries and errors ----------------------------------------------------------------------

    def test_a_connect_failure_is_retried_for_any_method(self, front, backends):
        a = backends[0]
        proxy = front.start([refused_url(), a.url], **SHORT)
        for _ in range(4):
            response = proxy.request("POST", "/", body=b"once")
            assert response.status == 200 and response.json()["body"] == "once"
        assert a.requests == 4

    @pytest.mark.parametrize("failure", ["503", "close", "refused"])
    def test_a_get_is_retried_on_another_backend(self, front, backends, failure):
        a, b = backends[:2]
        if failure == "503":
            a.status = 503
        elif failure == "close":
            a.behaviour = "close"
        else:
            a.stop()
        proxy = front.start([a, b], **SHORT)       # a fresh round-robin: a is picked first
        response = proxy.request("GET", "/")
        assert response.status == 200 and response.json()["server"] == "b"
        assert (a.requests, b.requests) == (0 if failure == "refused" else 1, 1)
        if front.sees_balancer:
            stats = proxy.stats()
            assert [row["in_flight"] for row in stats.values()] == [0, 0]
            assert stats[a.url]["failures"] == 1

    def test_a_post_is_not_retried_once_sent_but_a_connect_failure_is(self, front, backends):
        a, b = backends[:2]
        a.behaviour = "close"
        response = front.start([a, b], **SHORT).request("POST", "/", body=b"order")
        assert response.status == 502
        assert response.body == b"502 Bad Gateway: no backend gave a response\n"
        assert (a.requests, b.requests) == (1, 0)          # the POST went out once
        a.stop()                                           # refused: nothing was sent
        response = front.start([a, b], **SHORT).request("POST", "/", body=b"order")
        assert response.status == 200
        assert response.json() == {**response.json(), "server": "b", "body": "order"}

    def test_retry_non_idempotent_opt_in(self, front, backends):
        a, b = backends[:2]
        a.behaviour = "close"
        response = front.start([a, b], retry_non_idempotent=True).request("POST", "/",
                                                                          body=b"x")
        assert response.json()["server"] == "b"

    def test_a_failure_status_is_passed_through_for_a_post(self, front, backends):
        a, b = backends[:2]
        a.status = 503
        response = front.start([a, b]).request("POST", "/", body=b"x")
        assert response.status == 503 and response.json()["server"] == "a"
        assert b.requests == 0

    def test_when_every_attempt_fails_the_client_gets_the_last_response_as_it_was(self, front,
                                                                                  backends):
        for server in backends:
            server.status = 503
        response = front.start(backends).request("GET", "/")
        assert response.status == 503
        assert response.header("x-server") == [response.json()["server"]] == ["c"]
        assert [s.requests for s in backends] == [1, 1, 1]

    def test_retries_are_bounded_by_the_setting(self, front, backends):
        for server in backends:
            server.behaviour = "close"
        response = front.start(backends, retries=1).request("GET", "/")
        assert response.status == 502
        assert sum(s.requests for s in backends) == 2

    def test_a_small_body_is_replayed_on_a_retry_and_a_streamed_one_is_not(self, front,
                                                                           backends):
        a, b = backends[:2]
        a.behaviour = "close"
        streamed = front.start([a, b], retry_buffer=1024, **SHORT).request(
            "PUT", "/", body=[b"x" * 4096] * 3, headers=[("Content-Length", "12288")])
        assert streamed.status == 502 and b.requests == 0
        # small, in one piece, without a length (chunked)
        small = front.start([a, b], retry_buffer=1024, **SHORT).request("PUT", "/",
                                                                        body=[b"y" * 500])
        if front.replays_a_small_chunked_body:
            assert small.status == 200 and small.json()["body"] == "y" * 500
        else:
            assert small.status == 502 and b.requests == 0
        held = b.requests
        # at the limit: held and replayed
        at_limit = front.start([a, b], retry_buffer=16, **SHORT).request(
            "PUT", "/", body=b"0123456789abcdef")
        assert at_limit.status == 200 and at_limit.json()["body"] == "0123456789abcdef"
        # one byte over, in one piece with its length
        over = front.start([a, b], retry_buffer=16, **SHORT).request(
            "PUT", "/", body=b"0123456789abcdefg")
        if front.replays_a_body_over_the_limit_received_whole:
            assert over.status == 200 and over.json()["body"] == "0123456789abcdefg"
            assert b.requests == held + 2
        else:
            assert over.status == 502 and b.requests == held + 1   # only the small ones

    def test_502_with_a_short_body_when_no_backend_answers(self, front):
        proxy = front.start([refused_url(), refused_url()], **SHORT)
        response = proxy.request("GET", "/")
        assert response.status == 502
        assert response.body == b"502 Bad Gateway: no backend gave a response\n"
        assert response.header("content-type") == ["text/plain; charset=utf-8"]
        if front.sees_balancer:
            assert [row["in_flight"] for row in proxy.stats().values()] == [0, 0]

    def test_504_when_the_backend_does_not_answer_in_time_and_a_get_moves_on(self, front,
                                                                            backends):
        a, b = backends[:2]
        a.behaviour = "hang"
        proxy = front.start([a], read_timeout=0.2, retries=0)
        response = proxy.request("GET", "/")
        assert response.status == 504
        assert response.body == b"504 Gateway Timeout: the backend did not answer in time\n"
        if front.sees_balancer:
            assert [row["in_flight"] for row in proxy.stats().values()] == [0]
        moved = front.start([a, b], read_timeout=0.2).request("GET", "/")
        assert moved.status == 200 and moved.json()["server"] == "b"

    @needs(lambda front, params: front.sees_balancer,
           "a pool that can be emptied from outside the front-end's process")
    def test_503_with_retry_after_when_the_pool_is_empty(self, front, backends):
        balancer = lb.Balancer([backends[0].url])
        balancer.update([])
        response = front.start(balancer=balancer).request("GET", "/")
        assert response.status == 503 and response.header("retry-after") == ["5"]
        assert response.body == b"503 Service Unavailable: no backend is available\n"

    def test_a_response_cut_after_its_head_is_not_retried(self, front, backends):
        a, b = backends[:2]
        a.behaviour = "truncate"
        a.body_size = 200_000
        proxy = front.start([a, b], **SHORT)
        response = proxy.request("GET", "/")
        assert response.status == 200 and not response.complete
        assert len(response.body) < 200_000
        assert b.requests == 0
        if front.sees_balancer:
            assert [row["in_flight"] for row in proxy.stats().values()] == [0, 0]

    def test_a_backend_killed_under_concurrent_load_costs_no_get_errors(self, front, backends):
        """Sixteen clients through a real server; a backend is stopped once 80 requests are
        done, and the clients go on for 150 more (3,000 at most). A response the backend
        cut after its head cannot be retried (see above): in-process it is a 200 whose body
        broke off; through the gateway it may be the server's own 500
        (``cut_before_its_body``)."""
        a, b, c = backends
        proxy = front.start(backends, max_fails=3, **SHORT)
        statuses: list[int | None] = []
        others: list[tuple[int | None, bytes]] = []
        killed_at: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if len(statuses) >= 3000 or (killed_at and len(statuses) >= killed_at[0] + 150):
                        return
                response = proxy.raw(b"GET /load HTTP/1.1\r\nHost: g\r\n\r\n")
                with lock:
                    statuses.append(response.status)
                    if response.status != 200:
                        others.append((response.status, response.body))
                    kill = len(statuses) >= 80 and not killed_at
                    if kill:
                        killed_at.append(len(statuses))
                if kill:
                    b.stop()                       # killed mid-load: refused from now on

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert killed_at and len(statuses) >= killed_at[0] + 150
        cut = front.cut_before_its_body
        assert all(cut is not None and other == cut for other in others), others
        assert set(statuses) <= {200, cut and cut[0]} and 200 in statuses
        if front.sees_balancer:
            # a server sends the last byte before it closes the response (and the pick
            # ends): give it a moment
            deadline = time.monotonic() + 5
            while any(row["in_flight"] for row in proxy.stats().values()) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = proxy.stats()
            assert [row["in_flight"] for row in stats.values()] == [0, 0, 0]
            assert stats[b.url]["state"] == "ejected"

    # -- sticky cookies (LB_STICKY_COOKIE) --------------------------------------------------------

    @pytest.mark.parametrize("policy", ["round_robin", "random"])
    def test_the_first_response_sets_the_sticky_cookie_and_the_client_stays_there(
            self, front, backends, policy):
        proxy = front.start(backends, prefix="/api", sticky_cookie="lb", policy=policy)
        first = proxy.request("GET", "/api/x")
        home = first.json()["server"]
        value = sticky_value(url_of(backends, home))
        assert first.header("set-cookie") == [f"lb={value}; Path=/api; HttpOnly; SameSite=Lax"]
        sent = f"theme=dark; lb={value}; sid=7"
        for i in range(6):
            seen = proxy.request("GET", f"/api/{i}", headers=[("Cookie", sent)])
            assert seen.status == 200 and seen.json()["server"] == home
            assert seen.header("set-cookie") == []          # it has the right one
            # the Cookie header reaches the backend as the client sent it, ours included
            assert seen.json()["headers"][front.forwarded_name("Cookie")] == sent
        assert [s.requests for s in backends if s.name == home] == [7]

    def test_the_sticky_cookie_is_added_beside_the_backends_own(self, front, backends):
        a = backends[0]
        a.extra_headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly")]
        response = front.start([a], sticky_cookie="SERVERID").request("GET", "/")
        assert response.header("set-cookie") == [
            "a=1; Path=/", "b=2; HttpOnly",
            f"SERVERID={sticky_value(a.url)}; Path=/; HttpOnly; SameSite=Lax"]

    @pytest.mark.parametrize("prefix, path", [("/", "/"), ("/api/v1/", "/api/v1")])
    def test_the_sticky_cookie_is_scoped_to_the_prefix_and_secure_over_https(
            self, front, backends, prefix, path):
        a = backends[0]
        proxy = front.start([a], prefix=prefix, sticky_cookie="lb")
        for scheme in front.schemes:
            response = proxy.request("GET", prefix + "x", scheme=scheme)
            secure = "; Secure" if scheme == "https" else ""
            assert response.header("set-cookie") == [
                f"lb={sticky_value(a.url)}; Path={path}; HttpOnly; SameSite=Lax{secure}"]

    def test_the_sticky_cookie_is_secure_behind_a_trusted_tls_terminator(self, front,
                                                                         backends):
        """A TLS terminator in front (a trusted proxy) says ``X-Forwarded-Proto: https``:
        the client's connection is https, so the cookie is ``Secure`` (as the backend is
        told and as redirects say). The client's scheme is one rule: a trusted proxy's
        word (its last entry) over the connection's, both ways; anyone else's is ignored."""
        a = backends[0]
        proxy = front.start([a], sticky_cookie="lb",
                            trusted_proxies=[f"{front.proxy_peer}/32"])
        cookie = f"lb={sticky_value(a.url)}; Path=/; HttpOnly; SameSite=Lax"
        for proto, secure in [("https", True), ("HTTPS", True), ("http, https", True),
                              ("https, http", False)]:
            for scheme in front.schemes:
                response = proxy.request("GET", "/", scheme=scheme, peer=front.proxy_peer,
                                         headers=[("X-Forwarded-Proto", proto)])
                assert response.json()["headers"]["X-Forwarded-Proto"] == proto
                assert response.header("set-cookie") == [
                    cookie + ("; Secure" if secure else "")], (proto, scheme)
        # the same header from a peer that is not trusted changes nothing
        for scheme in front.schemes:
            response = proxy.request("GET", "/", scheme=scheme,
                                     headers=[("X-Forwarded-Proto", "https")])
            assert response.json()["headers"]["X-Forwarded-Proto"] == scheme
            assert response.header("set-cookie") == [
                cookie + ("; Secure" if scheme == "https" else "")]

    def test_a_forged_or_foreign_sticky_cookie_is_balanced_and_replaced(self, front, backends):
        proxy = front.start(backends, sticky_cookie="lb")       # round robin: a, b, c, a
        forged = ["0123456789abcdef", sticky_value(refused_url()),     # another pool's
                  sticky_value(backends[1].url).upper(), "../b"]
        served = []
        for value in forged:
            response = proxy.request("GET", "/", headers=[("Cookie", f"lb={value}")])
            server = response.json()["server"]
            served.append(server)
            assert response.header("set-cookie") == [
                f"lb={sticky_value(url_of(backends, server))}; Path=/; HttpOnly; SameSite=Lax"]
        assert served == ["a", "b", "c", "a"]       # as without a cookie

    @pytest.mark.parametrize("gone", ["stopped", "closing"])
    def test_a_client_whose_backend_is_gone_moves_and_gets_a_new_cookie(self, front, backends,
                                                                          gone):
        a = backends[0]
        proxy = front.start(backends, sticky_cookie="lb", max_fails=1, **SHORT)
        old = [("Cookie", f"lb={sticky_value(a.url)}")]
        for _ in range(2):
            assert proxy.request("GET", "/", headers=old).json()["server"] == "a"
        if gone == "stopped":
            a.stop()
        else:
            a.behaviour = "close"
        moved = proxy.request("GET", "/", headers=old)      # a fails; retried elsewhere
        assert moved.status == 200
        home = moved.json()["server"]
        value = sticky_value(url_of(backends, home))
        assert home != "a"
        assert moved.header("set-cookie") == [f"lb={value}; Path=/; HttpOnly; SameSite=Lax"]
        # a is ejected now (max_fails=1): a client still carrying its cookie is balanced
        # without trying it, and gets a new cookie too
        tried = a.requests
        again = proxy.request("GET", "/", headers=old)
        assert again.status == 200 and again.json()["server"] != "a" and a.requests == tried
        assert again.header("set-cookie") == [
            f"lb={sticky_value(url_of(backends, again.json()['server']))}; Path=/; HttpOnly; "
            "SameSite=Lax"]
        # the new cookie is followed
        for _ in range(3):
            response = proxy.request("GET", "/", headers=[("Cookie", f"lb={value}")])
            assert response.json()["server"] == home and response.header("set-cookie") == []

    def test_the_proxys_own_502_and_504_set_no_sticky_cookie(self, front, backends):
        a = backends[0]
        cookie = [("Cookie", "lb=0123456789abcdef")]
        refused = front.start([refused_url()], sticky_cookie="lb", **SHORT).request(
            "GET", "/", headers=cookie)
        assert refused.status == 502 and refused.header("set-cookie") == []
        a.behaviour = "hang"
        timed_out = front.start([a], sticky_cookie="lb", read_timeout=0.2, retries=0).request(
            "GET", "/")
        assert timed_out.status == 504 and timed_out.header("set-cookie") == []

    @needs(lambda front, params: front.sees_balancer,
           "a pool that can be emptied from outside the front-end's process")
    def test_the_proxys_own_503_sets_no_sticky_cookie(self, front, backends):
        balancer = lb.Balancer([backends[0].url])
        balancer.update([])
        response = front.start(balancer=balancer, sticky_cookie="lb").request("GET", "/")
        assert response.status == 503 and response.header("set-cookie") == []

    # -- the deadline (LB_TIMEOUT) ----------------------------------------------------------------

    def test_a_deadline_answers_504_in_its_time_and_starts_no_retry_past_it(self, front,
                                                                            backends):
        """a answers 503 after 0.15 s, b never answers: the GET is retried on b, whose wait
        the 0.4 s deadline cuts (its read timeout is 5 s); c is never tried. Without the
        deadline the client would wait 0.15 + 5 s and get c's 200."""
        a, b, c = backends
        a.status, a.delay = 503, 0.15
        b.behaviour = "hang"
        proxy = front.start(backends, timeout=0.4, read_timeout=5)      # round robin: a first
        started = time.monotonic()
        response = proxy.request("GET", "/")
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert response.body == b"504 Gateway Timeout: the backend did not answer in time\n"
        assert (a.requests, b.requests, c.requests) == (1, 1, 0)
        assert elapsed < 0.4 + 1.0, f"the 0.4 s deadline answered after {elapsed:.2f} s"

    def test_retries_within_the_deadline_still_happen_when_there_is_time(self, front,
                                                                         backends):
        """a closes at once, b does not answer within its own 0.3 s read timeout: both are
        retried within the 10 s deadline, and c answers."""
        a, b, c = backends
        a.behaviour = "close"
        b.behaviour = "hang"
        proxy = front.start(backends, timeout=10, read_timeout=0.3, **SHORT)
        response = proxy.request("GET", "/")
        assert response.status == 200 and response.json()["server"] == "c"
        assert (a.requests, b.requests, c.requests) == (1, 1, 1)

    def test_a_deadline_answers_504_when_the_response_head_trickles_in(self, front):
        """The backend sends its head a byte every 50 ms: each read gets one well within the
        5 s read timeout, and the head does not end for 5 s. The 0.5 s deadline bounds the
        wait for the whole head, not each read, and the backend's connection is let go."""
        trickling = TricklingHead()
        try:
            proxy = front.start([trickling], timeout=0.5, read_timeout=5)
            started = time.monotonic()
            response = proxy.request("GET", "/")
            elapsed = time.monotonic() - started
            assert response.status == 504
            assert response.body == b"504 Gateway Timeout: the backend did not answer in time\n"
            assert elapsed < 0.5 + 1.0, f"the 0.5 s deadline answered after {elapsed:.2f} s"
            assert trickling.given_up.wait(2), "the attempt's connection is still open"
        finally:
            trickling.stop()

    # -- the retry budget, and the bytes each attempt reports -----------------------------------

    def test_a_spent_retry_budget_passes_the_failure_on_without_more_attempts(self, front,
                                                                              backends):
        """Every backend answers 503. The budget holds 0.2 x 10 s = 2 retries and no share of
        the requests: the first GET makes its two retries (a, b, c), each later one is
        answered with its first attempt's 503, and each refusal is counted."""
        for server in backends:
            server.status = 503
        proxy = front.start(backends, retries=2, max_fails=0, retry_budget=0,
                            retry_budget_min_per_second=0.2)
        served = []
        for _ in range(4):
            response = proxy.request("GET", "/")
            assert response.status == 503
            served.append(response.json()["server"])
        assert served == ["c", "a", "b", "c"]
        assert [s.requests for s in backends] == [2, 2, 2]      # 3 + 1 + 1 + 1 attempts
        budget = proxy.pool_stats()["retry_budget"]
        assert (budget["requests"], budget["retries"], budget["exhausted_total"]) == (4, 2, 3)

    def test_each_answered_attempt_reports_its_body_bytes(self, front, backends):
        """Request body bytes sent (held, streamed with a length, streamed chunked) and
        response body bytes received reach the balancer's counters (the bandwidth policy's
        measure)."""
        a = backends[0]
        a.body_size = 10_000
        proxy = front.start([a], retry_buffer=1024)
        bodies: list[tuple[Any, list[tuple[str, str]]]] = [
            (b"h" * 1000, []),
            ([b"s" * 4096] * 3, [("Content-Length", "12288")]),
            ([b"c" * 4096] * 3, []),
        ]
        for body, headers in bodies:
            response = proxy.request("PUT", "/", body=body, headers=headers)
            assert response.status == 200 and len(response.body) == 10_000
        proxy.request("HEAD", "/")
        row = settled(proxy)[a.url]
        assert (row["requests"], row["bytes_received"]) == (4, 3 * 10_000)
        assert row["bytes_sent"] == 1000 + 12288 + 12288

    # -- configuration -----------------------------------------------------------------------------

    @pytest.mark.parametrize("strip, policy", [("true", "latency"), ("yes", "least_conn")])
    def test_every_setting_can_come_from_lb_variables(self, front, backends, strip, policy):
        a = backends[0]
        proxy = front.start(app=front.wraps_an_app, environ={
            "LB_BACKENDS": a.url, "LB_PREFIX": "/api", "LB_STRIP_PREFIX": strip,
            "LB_POLICY": policy})
        assert proxy.policy() == policy
        if front.sees_balancer:                  # the settings objects, in this process
            middleware = proxy.middleware
            assert middleware.balancer.settings.policy == policy
            assert middleware.settings.prefix == "/api"
            assert middleware.settings.strip_prefix is True
        assert proxy.request("GET", "/api/x").json()["path"] == "/x"
        outside = proxy.request("GET", "/x")
        assert outside.body == (LOCAL if front.wraps_an_app
                                else b"404 Not Found: no route for this path\n")

    @pytest.mark.parametrize("environ, message", [
        ({}, "LB_BACKENDS is not set"),
        ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_STRIP_PREFIX": "x"},
         "LB_STRIP_PREFIX has value 'x'"),
        ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRY_BUFFER": "lots"},
         "LB_RETRY_BUFFER has value 'lots'"),
        ({"LB_BACKENDS": "nope"}, "LB_BACKENDS has value 'nope'"),
    ])
    def test_bad_lb_variables_raise_config_error_naming_them(self, front, environ, message):
        assert re.search(message, front.config_error(environ))

    @needs(lambda front, params: front.takes_keywords, "a front-end that takes keywords")
    def test_a_bad_keyword_setting_raises_config_error_naming_it(self, front):
        assert re.search("backend URL 'nope'", front.config_error(backends=["nope"]))

    @needs(lambda front, params: front.sees_balancer,
           "a balancer shared with the test (the gateway's is its own, in its process)")
    def test_front_ends_sharing_a_balancer_share_its_rotation_and_policy(self, front, backends):
        pool = lb.Balancer([s.url for s in backends])
        first = front.start(balancer=pool, prefix="/one")
        second = front.start(balancer=pool, prefix="/two")
        served = [proxy.request("GET", path).json()["server"]
                  for proxy, path in [(first, "/one"), (second, "/two"), (first, "/one")]]
        assert served == ["a", "b", "c"]
        assert re.search("policy given with balancer=",
                         front.config_error(balancer=pool, policy="random"))
