"""The redirect rule every front-end shares (lbmiddleware/proxy/redirects.py): which
``Location``, ``Content-Location`` and ``Refresh`` values point at a backend, and what they
become. Pure functions; the front-ends' own tests run them against real backends."""

from __future__ import annotations

import pytest

import lbmiddleware as lb
from lbmiddleware.proxy import BINARY, TEXT
from lbmiddleware.proxy.redirects import (
    RedirectRule,
    backend_reference,
    forwarded_origin,
    public_origin,
)

BACKEND = lb.Backend("http://127.0.0.1:8001")
BASED = lb.Backend("http://127.0.0.1:8001/v1")
NAMED = lb.Backend("https://10.0.0.5:8443/v1", server_name="api.internal")
V6 = lb.Backend("http://[::1]:8001")
ORIGIN = "https://front.example"


@pytest.mark.parametrize("backend, url, rest", [
    (BACKEND, "http://127.0.0.1:8001/new", "/new"),
    (BACKEND, "http://127.0.0.1:8001", ""),
    (BACKEND, "HTTP://127.0.0.1:8001/a?b=1#c", "/a?b=1#c"),
    (BACKEND, "//127.0.0.1:8001/net-path", "/net-path"),      # resolved on the backend's
    (BASED, "http://127.0.0.1:8001/v1/new?x", "/new?x"),
    (BASED, "http://127.0.0.1:8001/v1", ""),
    (NAMED, "https://api.internal:8443/v1/x", "/x"),           # the Host it got: its name
    (NAMED, "https://10.0.0.5:8443/v1/x", "/x"),               # or its address
    (NAMED, "https://API.Internal:8443/v1/x", "/x"),
    (V6, "http://[::1]:8001/x", "/x"),
    (lb.Backend("http://b.internal"), "http://b.internal:80/x", "/x"),  # the default port
    # dot segments resolved as the client will (RFC 3986 5.2.4; %2e is a dot)
    (BASED, "http://127.0.0.1:8001/v1/a/../b?x", "/b?x"),
    (BASED, "http://127.0.0.1:8001/v1/./a/%2E%2e/b", "/b"),
    (BASED, "http://127.0.0.1:8001/v1/a/..", "/"),
    (BASED, "http://127.0.0.1:8001/v1/..a/b", "/..a/b"),       # not a dot segment
    (BACKEND, "http://127.0.0.1:8001/a/../../admin", "/admin"),
])
def test_a_reference_to_the_backend_gives_what_follows_its_base_path(backend, url, rest):
    assert backend_reference(url, backend) == rest


@pytest.mark.parametrize("backend, url", [
    (BACKEND, "/new"), (BACKEND, "new"), (BACKEND, "?x=1"), (BACKEND, ""),   # relative
    (BACKEND, "http://127.0.0.1:8002/new"),                 # another port
    (BACKEND, "http://127.0.0.2:8001/new"),                 # another host
    (BACKEND, "https://127.0.0.1:8001/new"),                # another scheme
    (BACKEND, "http://127.0.0.1/new"),                      # the default port is another
    (BACKEND, "https://cdn.example/x"),
    (BASED, "http://127.0.0.1:8001/v2/x"),                  # outside the base path
    (BASED, "http://127.0.0.1:8001/v1x"),
    (BASED, "http://127.0.0.1:8001/"),
    (BASED, "http://127.0.0.1:8001/v1/../admin"),           # outside, once resolved
    (BASED, "http://127.0.0.1:8001/v1/%2e%2E/admin"),
    (BASED, "http://127.0.0.1:8001/v1/a/../../admin"),
    (BACKEND, "http://[::1/x"), (BACKEND, "http://127.0.0.1:99999/x"),     # not URLs
    (BACKEND, "mailto:someone@127.0.0.1"),
])
def test_anything_else_is_not_the_backend(backend, url):
    assert backend_reference(url, backend) is None


@pytest.mark.parametrize("prefix, strip, value, expected", [
    ("/", False, "http://127.0.0.1:8001/new?a=1", f"{ORIGIN}/new?a=1"),
    ("/api", False, "http://127.0.0.1:8001/api/new", f"{ORIGIN}/api/new"),
    ("/api", True, "http://127.0.0.1:8001/new", f"{ORIGIN}/api/new"),     # prefix put back
    ("/api", True, "http://127.0.0.1:8001/", f"{ORIGIN}/api/"),
    ("/api", True, "http://127.0.0.1:8001", f"{ORIGIN}/api"),
    ("/", True, "http://127.0.0.1:8001", f"{ORIGIN}/"),
    ("/", False, "/relative", None),
    ("/", False, "http://elsewhere.example/x", None),
    ("/api", True, "http://127.0.0.1:8001/../admin", f"{ORIGIN}/api/admin"),  # still the route's
])
def test_location_becomes_the_clients_origin_and_the_routes_path(prefix, strip, value,
                                                                  expected):
    rule = RedirectRule(prefix, strip)
    assert rule.rewrite("location", value, BACKEND, ORIGIN) == expected
    assert rule.rewrite("content-location", value, BACKEND, ORIGIN) == expected


@pytest.mark.parametrize("value, expected", [
    ("5; url=http://127.0.0.1:8001/later", f"5; url={ORIGIN}/api/later"),
    ("0;URL='http://127.0.0.1:8001/x'", f"0;URL='{ORIGIN}/api/x'"),
    ('3 ; Url = "http://127.0.0.1:8001/y" ', f'3 ; Url = "{ORIGIN}/api/y" '),
    ("1, http://127.0.0.1:8001/z", f"1, {ORIGIN}/api/z"),
    ("5; url=/relative", None),
    ("5; url=https://elsewhere.example/", None),
    ("5", None),
    ("junk", None),
])
def test_refresh_keeps_its_delay_and_spelling(value, expected):
    assert RedirectRule("/api", True).rewrite("refresh", value, BACKEND, ORIGIN) == expected


@pytest.mark.parametrize("value, origin, expected", [
    ("https://127.0.0.1:8001/x", "https://front.example", "https://front.example/x"),
    ("https://127.0.0.1:8001/x", "http://front.example", None),
    ("https://127.0.0.1/x", "https://front.example", None),      # 443: not the backend's
    ("//127.0.0.1:8001/x", "https://front.example", "https://front.example/x"),
])
def test_a_backend_believing_x_forwarded_proto_is_recognised_by_its_address(value, origin,
                                                                            expected):
    """A backend that believes the X-Forwarded-Proto it got builds its own address with the
    client's scheme (uvicorn trusts it from 127.0.0.1 by default)."""
    assert RedirectRule().rewrite("location", value, BACKEND, origin) == expected


def test_other_headers_are_not_the_rules():
    rule = RedirectRule()
    assert rule.rewrite("link", "<http://127.0.0.1:8001/x>", BACKEND, ORIGIN) is None


@pytest.mark.parametrize("proto, host, expected", [
    ("http", "front.example", "http://front.example"),
    ("HTTPS", "front.example:8443", "https://front.example:8443"),
    ("https", "[::1]:8443", "https://[::1]:8443"),
    ("http", "a.example, b.example", "http://b.example"),      # the nearest proxy's word
    ("https, http", "front.example", "http://front.example"),
    ("ftp", "front.example", None), ("", "front.example", None),
    # Traefik says ws/wss for a WebSocket's handshake: the client's scheme is read as the
    # sticky cookie's Secure reads it (proxy/client.py proto_scheme)
    ("ws", "front.example", "http://front.example"),
    ("wss", "front.example", "https://front.example"),
    ("http", None, None), ("http", "", None),
    ("http", "evil.example/path", None), ("http", "user@evil.example", None),
    ("http", "a b", None), ("http", "front.example:port", None), ("http", "ex\u00e4mple", None),
])
def test_the_public_origin_is_checked(proto, host, expected):
    assert public_origin(proto, host) == expected


def test_the_origin_the_client_used_comes_from_the_forwarding_headers_as_the_rules_set_them():
    sent = [("Host", "front.example:8080"), ("X-Forwarded-Proto", "evil"),
            ("X-Forwarded-Host", "evil.example")]
    # an untrusted peer's X-Forwarded-* are replaced: the request's scheme and Host
    upstream = TEXT.request_headers(sent, peer="203.0.113.7", scheme="https",
                                    upstream_host="127.0.0.1:8001")
    assert forwarded_origin(upstream) == "https://front.example:8080"
    # a trusted one's are believed
    upstream = BINARY.request_headers(
        [(n.encode(), v.encode()) for n, v in sent[:1]]
        + [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"public.example")],
        peer="10.0.0.1", scheme="http", trusted_peer=True)
    assert forwarded_origin(upstream) == "https://public.example"
    # no Host: no origin to rewrite to
    assert forwarded_origin(TEXT.request_headers([], peer=None, scheme="http")) is None


def test_a_bound_rule_finds_the_origin_only_when_a_header_points_at_the_backend():
    upstream = [(b"Host", b"127.0.0.1:8001"), (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"front.example")]
    rewrite = RedirectRule("/api", True).bind(BACKEND, upstream)
    assert rewrite("location", "http://127.0.0.1:8001/x") == "http://front.example/api/x"
    assert rewrite("location", "/x") is None
    assert RedirectRule().bind(BACKEND, [])("location", "http://127.0.0.1:8001/x") is None


def test_response_headers_lose_the_backends_date_and_server_and_rewrite_redirects():
    rewrite = RedirectRule().bind(BACKEND, [("X-Forwarded-Proto", "http"),
                                            ("X-Forwarded-Host", "front.example")])
    out = TEXT.response_headers([
        ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"), ("Server", "backend/1"),
        ("Location", "http://127.0.0.1:8001/new"), ("content-location", "/rel"),
        ("Refresh", "5; url=http://127.0.0.1:8001/later"), ("X-Other", "v")], rewrite)
    assert out == [("Location", "http://front.example/new"), ("content-location", "/rel"),
                   ("Refresh", "5; url=http://front.example/later"), ("X-Other", "v")]
    out = BINARY.response_headers([(b"date", b"x"), (b"SERVER", b"y"),
                                   (b"location", b"http://127.0.0.1:8001/\xe9")],
                                  RedirectRule().bind(BACKEND, [
                                      (b"X-Forwarded-Proto", b"http"),
                                      (b"X-Forwarded-Host", b"front.example")]))
    assert out == [(b"location", b"http://front.example/\xe9")]
    # without a rule, redirects pass as they came
    assert TEXT.response_headers([("Location", "http://127.0.0.1:8001/new")]) == [
        ("Location", "http://127.0.0.1:8001/new")]


def test_response_headers_bind_an_unbound_rule_only_when_a_header_needs_it():
    headers = [("Location", "http://127.0.0.1:8001/new"), ("X-Other", "v"),
               ("Content-Location", "http://127.0.0.1:8001/other")]
    upstream = [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "front.example")]
    rule = RedirectRule("/api", True)
    expected = TEXT.response_headers(headers, rule.bind(BACKEND, upstream))
    assert TEXT.response_headers(headers, rule, BACKEND, upstream) == expected == [
        ("Location", "http://front.example/api/new"), ("X-Other", "v"),
        ("Content-Location", "http://front.example/api/other")]
    origins: list[str] = []

    def origin() -> str:
        origins.append("read")
        return "http://front.example"

    assert TEXT.response_headers(headers, rule, BACKEND, origin) == expected
    assert origins == ["read"]          # bound once, for both headers
    assert TEXT.response_headers([("Location", "/rel")], rule, BACKEND, origin) == [
        ("Location", "/rel")]
    assert origins == ["read"]          # a relative one: never bound
    with pytest.raises(TypeError):
        TEXT.response_headers(headers, rule)
