"""The proxy rules shared by both middlewares (lbmiddleware.proxy): pure functions."""

from __future__ import annotations

import ast
import ipaddress
import sys
import urllib.parse
from pathlib import Path

import pytest

import lbmiddleware as lb
from lbmiddleware.core.forwarding import ForwardingSettings
from lbmiddleware.proxy import (
    BINARY,
    TEXT,
    ClientAddress,
    UnsafeRequest,
    client_scheme,
    error_response,
    join_target,
    match_prefix,
    normalize_prefix,
    parse_cookie,
    quote_path,
    sticky_key,
    upstream_url,
)
from lbmiddleware.proxy.settings import ProxySettings

BACKEND = lb.Backend("http://127.0.0.1:8001/v1")


# -- prefix and target ----------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("", "/"), ("/", "/"), ("api", "/api"), ("/api/", "/api"), ("/a/b/", "/a/b")])
def test_prefix_is_normalised(given, expected):
    assert normalize_prefix(given) == expected


def test_prefix_with_control_characters_or_query_is_refused():
    for bad in ("/api\r\n", "/api?x", "/api#x"):
        with pytest.raises(ValueError):
            normalize_prefix(bad)


@pytest.mark.parametrize("path, strip, expected", [
    ("/api", False, "/api"), ("/api/x", False, "/api/x"), ("/api/x", True, "/x"),
    ("/api", True, "/"), ("/apix", False, None), ("/other", True, None), ("/ap", False, None)])
def test_match_prefix(path, strip, expected):
    assert match_prefix("/api", path, strip) == expected


def test_root_prefix_matches_every_path_but_not_a_url():
    assert match_prefix("/", "/anything/at/all") == "/anything/at/all"
    assert match_prefix("/", "http://evil.example/") is None


@pytest.mark.parametrize("path", [
    "//evil.example/", "/http://evil.example/", "/\\evil.example", "/@evil.example",
    "//user:pw@evil.example:80/x", "/https:/evil.example", "//evil.example\\@good/"])
def test_paths_that_look_like_urls_never_change_the_host(path):
    target = join_target(BACKEND.path, path, "q=1")
    url = upstream_url(BACKEND, target)
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == "127.0.0.1:8001"
    assert parts.path.startswith("/v1/")
    assert target == "/v1" + path + "?q=1"          # the path reaches the backend as sent


def test_target_keeps_the_path_and_query_as_sent():
    assert join_target("", "//evil.example/a%2Fb", "x=1&y=%20") == "//evil.example/a%2Fb?x=1&y=%20"
    assert join_target(b"/v1", b"/a/b", b"") == b"/v1/a/b"
    assert join_target("", "", "") == "/"
    assert join_target("", "no-slash", None) == "/no-slash"


def test_target_escapes_what_cannot_go_raw_in_a_request_line():
    assert join_target(b"", b"/a b#c\x7f\xff", b"q=a b") == b"/a%20b%23c%7F%FF?q=a%20b"


@pytest.mark.parametrize("path, query", [
    ("/a\r\nHost: evil", ""), ("/a\nb", ""), ("/a\x00", ""), ("/a", "x=1\r\nEvil: 1")])
def test_target_with_cr_lf_or_nul_is_refused(path, query):
    with pytest.raises(UnsafeRequest):
        join_target("", path, query)
    with pytest.raises(UnsafeRequest):
        join_target(b"", path.encode(), query.encode())


def test_upstream_url_refuses_a_target_that_is_not_a_path():
    for bad in ("evil.example/", "@evil.example", "http://evil.example/"):
        with pytest.raises(UnsafeRequest):
            upstream_url(BACKEND, bad)


def test_quote_path_encodes_a_decoded_path():
    assert quote_path("/a b/%/?#/\\é") == "/a%20b/%25/%3F%23/%5C%C3%A9"
    assert quote_path(b"/caf\xe9") == "/caf%E9"      # WSGI: latin-1 bytes as they came
    assert quote_path("//evil.example/") == "//evil.example/"


# -- request headers ---------------------------------------------------------------------------

def request(headers, **kwargs):
    options = dict(peer="198.51.100.9", scheme="https")
    options.update(kwargs)
    return BINARY.request_headers(headers, **options)


def names(headers):
    return [n.lower() for n, _ in headers]


def test_hop_by_hop_headers_are_dropped_from_requests():
    out = request([
        (b"host", b"front.example"), (b"connection", b"keep-alive"), (b"keep-alive", b"300"),
        (b"proxy-connection", b"keep-alive"), (b"te", b"trailers"), (b"trailer", b"x"),
        (b"upgrade", b"websocket"), (b"transfer-encoding", b"chunked"), (b"accept", b"*/*")])
    assert names(out) == [b"accept", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"]


def test_headers_named_by_connection_are_dropped_whatever_their_case():
    out = request([(b"connection", b"Keep-Alive, X-Secret ,x-other"), (b"X-Secret", b"s"),
                   (b"x-other", b"o"), (b"connection", b"X-Third"), (b"x-third", b"t"),
                   (b"x-kept", b"k")])
    assert b"x-secret" not in names(out) and b"x-other" not in names(out)
    assert b"x-third" not in names(out)
    assert (b"x-kept", b"k") in out


def test_the_clients_framing_is_never_copied():
    out = request([(b"content-length", b"5"), (b"transfer-encoding", b"chunked"),
                   (b"content-type", b"text/plain")])
    assert b"content-length" not in names(out) and b"transfer-encoding" not in names(out)
    assert (b"content-type", b"text/plain") in out


def test_host_is_the_backends_unless_preserved():
    received = [(b"host", b"front.example"), (b"accept", b"*/*")]
    assert request(received)[0] == (b"accept", b"*/*")           # the client adds the backend's
    assert request(received, upstream_host=b"127.0.0.1:8001")[0] == (b"Host", b"127.0.0.1:8001")
    assert request(received, preserve_host=True)[0] == (b"Host", b"front.example")


def test_forwarded_headers_are_set_and_x_forwarded_for_appended():
    out = dict(request([(b"host", b"front.example"), (b"x-forwarded-for", b"1.2.3.4"),
                        (b"x-forwarded-for", b"5.6.7.8"), (b"x-forwarded-proto", b"spoofed"),
                        (b"x-forwarded-host", b"evil.example")]))
    assert out[b"X-Forwarded-For"] == b"1.2.3.4, 5.6.7.8, 198.51.100.9"
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"X-Forwarded-Host"] == b"front.example"


def test_a_trusted_peer_keeps_its_forwarded_proto_and_host():
    out = dict(request([(b"host", b"inner"), (b"x-forwarded-proto", b"https"),
                        (b"x-forwarded-host", b"public.example")], scheme="http",
                       trusted_peer=True))
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"X-Forwarded-Host"] == b"public.example"


@pytest.mark.parametrize("header", [
    (b"x-a", b"v\r\nInjected: 1"), (b"x-a", b"v\nInjected: 1"), (b"x-a", b"v\x00"),
    (b"x-a\r\nInjected", b"1"), (b"host", b"a\r\nb")])
def test_cr_lf_or_nul_in_a_request_header_is_refused(header):
    with pytest.raises(UnsafeRequest):
        request([header])
    with pytest.raises(UnsafeRequest):
        TEXT.request_headers([(header[0].decode("latin-1"), header[1].decode("latin-1"))],
                             peer=None, scheme="http")


# TEXT and BINARY agree: tests/proxy/test_rules_kinds.py runs one table through both.


@pytest.mark.parametrize("headers, expected", [
    ([], 0), ([(b"content-length", b"12")], 12), ([(b"transfer-encoding", b"chunked")], None),
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], None),
    ([(b"content-length", b"5"), (b"content-length", b"5")], 5)])
def test_body_length_from_the_clients_framing(headers, expected):
    assert BINARY.body_length(headers) == expected


@pytest.mark.parametrize("value", [b"-1", b"1e3", b"x", b""])
def test_bad_content_length_is_refused(value):
    with pytest.raises(UnsafeRequest):
        BINARY.body_length([(b"content-length", value)])
    with pytest.raises(UnsafeRequest):
        BINARY.body_length([(b"content-length", b"5"), (b"content-length", b"6")])


# -- response headers ---------------------------------------------------------------------------

def test_hop_by_hop_headers_are_dropped_from_responses_and_set_cookie_kept():
    out = TEXT.response_headers([
        ("Set-Cookie", "a=1"), ("Connection", "close, X-Hop"), ("X-Hop", "h"),
        ("Keep-Alive", "timeout=5"), ("Set-Cookie", "b=2"), ("Upgrade", "h2c"),
        ("Trailer", "x"), ("Content-Type", "text/plain"), ("Content-Length", "3")])
    assert out == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Type", "text/plain"),
                   ("Content-Length", "3")]


def test_response_content_length_dropped_when_transfer_encoding_came_too():
    out = BINARY.response_headers([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"9"),
                                   (b"X", b"y")])
    assert out == [(b"X", b"y")]


# -- client address and sticky key -------------------------------------------------------------

def test_x_forwarded_for_from_an_untrusted_peer_changes_nothing():
    address = ClientAddress(["10.0.0.0/8"])
    assert address("203.0.113.7", ["1.2.3.4"]) == "203.0.113.7"
    assert ClientAddress()("203.0.113.7", ["1.2.3.4"]) == "203.0.113.7"


def test_trusted_peer_gives_the_rightmost_untrusted_address():
    address = ClientAddress(["10.0.0.0/8", "192.168.0.1/32"])
    assert address("10.0.0.1", ["1.2.3.4"]) == "1.2.3.4"
    assert address("10.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"]) == "1.2.3.4"
    assert address("10.0.0.1", [b"6.6.6.6", b"1.2.3.4, 192.168.0.1"]) == "1.2.3.4"
    assert address("10.0.0.1", ["10.9.9.9, 10.0.0.2"]) == "10.9.9.9"     # all trusted: leftmost
    assert address("10.0.0.1", []) == "10.0.0.1"
    assert address("10.0.0.1", ["1.2.3.4:5678"]) == "1.2.3.4"
    assert address("10.0.0.1", ["[2001:db8::1]:80"]) == "2001:db8::1"


@pytest.mark.parametrize("scheme, forwarded, expected", [
    ("http", [], "http"), ("https", [], "https"), ("ws", [], "http"), ("wss", [], "https"),
    ("http", ["https"], "https"), ("https", [b"http"], "http"),     # the proxy's word wins
    ("http", [" HTTPS "], "https"), ("ws", ["wss"], "https"),
    ("http", ["http, https"], "https"), ("http", ["https, http"], "http"),  # last entry
    ("http", ["https", "http"], "http"),                            # last header
    ("https", ["ftp"], "https"), ("http", [""], "http"),            # names none: the connection
    ("HTTPS", [], "https"), ("gopher", [], "http")])
def test_the_clients_scheme_is_a_trusted_proxys_word_else_the_connections(
        scheme, forwarded, expected):
    assert client_scheme(scheme, forwarded) == expected


def test_garbage_in_x_forwarded_for_is_never_the_client():
    address = ClientAddress(["10.0.0.0/8"])
    assert address("10.0.0.1", ["unknown"]) == "10.0.0.1"
    assert address("10.0.0.1", ["1.2.3.4, junk, 10.0.0.7"]) == "10.0.0.7"


def test_sticky_keys():
    headers = [(b"cookie", b"a=1; sid=\"s-42\"; b=2"), (b"x-user", b"alice")]
    assert sticky_key("client_ip", "1.2.3.4", headers) == "1.2.3.4"
    assert sticky_key("header:X-User", "1.2.3.4", headers) == "alice"
    assert sticky_key("cookie:sid", "1.2.3.4", headers) == "s-42"
    assert sticky_key("cookie:none", "1.2.3.4", headers) is None
    assert sticky_key("header:x-none", "1.2.3.4", [("X-None", "")]) == ""
    assert sticky_key("header:x-user", None, [("X-User", "bob")]) == "bob"
    assert parse_cookie("a=1;a=2; b") == {"a": "1"}


# -- error responses ------------------------------------------------------------------------------

@pytest.mark.parametrize("status, words", [
    (502, "Bad Gateway"), (503, "Service Unavailable"), (504, "Gateway Timeout"),
    (400, "Bad Request"), (404, "Not Found")])
def test_error_responses_are_short_plain_text(status, words):
    error = error_response(status)
    headers = dict(error.headers)
    assert error.status == status and error.body.startswith(f"{status} {words}: ".encode())
    assert error.body.endswith(b"\n") and len(error.body) < 100
    assert headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(error.body)
    assert ("Retry-After" in headers) == (status == 503)


def test_error_response_detail():
    assert error_response(502, "backend reset").body == b"502 Bad Gateway: backend reset\n"
    assert dict(error_response(503, retry_after=9).headers)["Retry-After"] == "9"


# -- settings ---------------------------------------------------------------------------------

def test_proxy_settings_from_variables():
    environ = {
        "LB_BACKENDS": "http://127.0.0.1:8001", "LB_PREFIX": "api/", "LB_STRIP_PREFIX": "yes",
        "LB_PRESERVE_HOST": "1", "LB_LISTEN": "[::1]:9000", "LB_RETRY_BUFFER": "1MB",
        "LB_RETRY_NON_IDEMPOTENT": "true", "LB_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"}
    settings = ProxySettings.from_env(environ)
    forwarding = ForwardingSettings.from_env(environ)      # the proxy's forwarding settings
    assert settings.prefix == "/api" and settings.strip_prefix and forwarding.preserve_host
    assert settings.retry_buffer == 1024 * 1024 and forwarding.retry_non_idempotent
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("192.0.2.1/32"))


def test_proxy_settings_defaults():
    settings, forwarding = ProxySettings(), ForwardingSettings()
    assert (settings.prefix, settings.strip_prefix, forwarding.preserve_host) == ("/", False, False)
    assert settings.retry_buffer == 65536 and not forwarding.retry_non_idempotent
    assert settings.trusted_proxies == ()


@pytest.mark.parametrize("variable, value, words", [
    ("LB_STRIP_PREFIX", "maybe", "LB_STRIP_PREFIX has value 'maybe': not a boolean"),
    ("LB_PREFIX", "/a?b", "LB_PREFIX has value '/a?b'"),
    ("LB_RETRY_BUFFER", "lots", "LB_RETRY_BUFFER has value 'lots': not a size")])
def test_bad_proxy_settings_name_the_variable(variable, value, words):
    with pytest.raises(lb.ConfigError, match=words.replace("?", r"\?")):
        ProxySettings.from_env({"LB_BACKENDS": "http://127.0.0.1:8001", variable: value})


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-an-ip", "10.0.0.0/8, 300.1.1.1"])
def test_bad_trusted_proxies_name_the_variable_and_cidr(value):
    with pytest.raises(lb.ConfigError) as info:
        ProxySettings.from_env(
            {"LB_BACKENDS": "http://127.0.0.1:8001", "LB_TRUSTED_PROXIES": value})
    message = str(info.value)
    assert message.startswith(f"LB_TRUSTED_PROXIES has value {value!r}") and "CIDR" in message


def test_describe_lists_the_proxy_settings():
    variables = [row[0] for row in ProxySettings.describe()]
    assert variables == ["LB_PREFIX", "LB_STRIP_PREFIX", "LB_TRUSTED_PROXIES", "LB_RETRY_BUFFER",
                         "LB_ACCESS_LOG"]


PROXY_MODULES = sorted(Path(lb.__file__).parent.joinpath("proxy").glob("*.py"))


@pytest.mark.parametrize("path", PROXY_MODULES, ids=[path.name for path in PROXY_MODULES])
def test_proxy_modules_import_only_the_standard_library(path):
    """Of the package, only the core and the errors: never upstream/ nor a front-end."""
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    outside = {(node.module or "").split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.level == 2}
    assert outside <= {"core", "errors"}
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 2 for node in ast.walk(tree))


def test_every_proxy_module_is_checked():
    names = {path.name for path in PROXY_MODULES}
    assert {"headers.py", "routing.py", "target.py", "client.py", "settings.py"} <= names


@pytest.mark.parametrize("path", ["/api/../admin", "/api/./x", "/api/x/..", "/api/a/../../b"])
def test_dot_segments_never_escape_the_prefix(path):
    assert match_prefix("/api", path) is None
    assert match_prefix("/api", path, strip=True) is None


def test_dots_inside_names_are_ordinary():
    assert match_prefix("/api", "/api/.well-known/x") == "/api/.well-known/x"
    assert match_prefix("/api", "/api/v1..2/x", strip=True) == "/v1..2/x"


# -- the response rules answer with pairs of their own ------------------------------------------
# (ASGI allows a header pair to be a two-item list; a caller may change its list after the
# rules ran: the answer must not change with it, past the rules)

@pytest.mark.parametrize("rules, word", [(BINARY, lambda s: s.encode()), (TEXT, str)])
def test_list_pairs_give_the_same_answer_as_tuple_pairs(rules, word):
    received = [[word("Content-Type"), word("text/plain")], [word("Date"), word("x")],
                [word("X-A"), word("1")]]
    out = rules.response_headers(received)
    assert out == rules.response_headers([tuple(pair) for pair in received])
    assert all(type(pair) is tuple for pair in out)


def test_the_answer_does_not_share_the_callers_pairs():
    received = [[b"x-a", b"1"], [b"content-type", b"text/plain"]]
    out = BINARY.response_headers(received)
    received[0][0] = b"server"                          # one the rules drop
    received[1][1] = b"text/html\r\nX-Injected: 1"      # one they never saw
    assert out == [(b"x-a", b"1"), (b"content-type", b"text/plain")]


@pytest.mark.parametrize("field", [(b"x-a", b"1", b"x-b: 2"), (b"x-a",)])
def test_a_response_field_that_is_not_a_pair_is_refused(field):
    with pytest.raises(ValueError):
        BINARY.response_headers([field])
