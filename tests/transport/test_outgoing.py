"""The attempt's request built from the parsed forms (lbmiddleware/transport/outgoing.py) is
the one httpx's public constructors build, on the installed httpx; and httpx's errors end
an attempt as the table says (lbmiddleware/transport/errors.py)."""

from __future__ import annotations

import httpx
import pytest

import lbmiddleware as lb
from lbmiddleware.transport import origins, outgoing
from lbmiddleware.transport.errors import failure, naming_backends

BASES = ["http://127.0.0.1:8001", "http://[::1]:8080/v1", "https://orders.example/a%20b",
         "http://xn--bcher-kva.example:81/api/v2"]
TARGETS = ["http://svc", "http://svc/", "http://svc/api/items?page=2&q=a+b",
           "http://svc:8080/p%2Fq?x=%20#frag", "http://svc/caf%C3%A9/?"]


def test_the_installed_httpx_takes_the_fast_ways():
    """(If an httpx release changes its internals, the public ways take over: this test
    then says so, and the overhead benchmark shows what it costs.)"""
    assert (outgoing._FAST_URLS, outgoing._FAST_HOSTS, outgoing._FAST_REQUESTS) == \
        (True, True, True)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("target", TARGETS)
def test_the_backend_url_is_the_one_parsed_from_text(base, target):
    backend, asked = httpx.URL(lb.Backend(base).url), httpx.URL(target)
    fast = outgoing._joined_parsed(backend, asked)
    public = outgoing.joined_url(backend, asked)
    assert fast == public
    assert (fast.raw_scheme, fast.raw_host, fast.port, fast.raw_path) == \
        (public.raw_scheme, public.raw_host, public.port, public.raw_path)
    assert fast.raw_path.startswith(backend.raw_path.rstrip(b"/") + b"/")


@pytest.mark.parametrize("url", [*BASES, *TARGETS, "http://[::1]/", "https://Svc.Example:443/",
                                 "http://bücher.example:8080/x", "http://user:pw@svc:81/"])
def test_the_netloc_is_the_one_httpx_sends_as_host(url):
    parsed = httpx.URL(url)
    assert outgoing._netloc_parsed(parsed) == outgoing.url_netloc(parsed) == parsed.netloc


ORIGIN_URLS = ["http://svc/", "http://svc:80/x", "http://SVC:8080/", "https://svc/",
               "https://svc:80/", "http://u:p@svc/", "http://[::1]:80/", "http://[::1]:81/",
               "http://bücher.example/", "http://xn--bcher-kva.example/"]


@pytest.mark.parametrize("url", ORIGIN_URLS)
def test_a_requests_parts_match_an_origins_exactly_when_its_origin_is_that(url):
    """The transports compare each request's origin_parts with their origin's parts_of,
    instead of making its Origin: equal parts mean the same origin, and a request without
    credentials has its own origin's parts."""
    parsed = httpx.URL(url)
    if not parsed.userinfo:                         # both ways, each with its own origin_of
        assert origins._parts_parsed(parsed) == origins.parts_of(origins._origin_parsed(parsed))
        assert origins._parts_public(parsed) == origins.parts_of(origins._origin_public(parsed))
    for other in map(httpx.URL, ORIGIN_URLS):
        same = origins.origin_parts(parsed) == origins.parts_of(origins.origin_of(other))
        assert not same or origins.origin_of(parsed) == origins.origin_of(other)


HEADERS = [
    [("Host", "svc"), ("Accept", "*/*")],
    [("Accept", "*/*"), ("host", "svc:8080"), ("X-A", "1")],
    [("Accept", "*/*")],
    [("Host", "a"), ("X", "1"), ("HOST", "b")],
]


@pytest.mark.parametrize("headers", HEADERS)
def test_the_host_is_replaced_as_setting_it_would(headers):
    given = httpx.Headers(headers)
    fast = outgoing._replaced_host_parsed(given, "backend.example:8001")
    public = outgoing.replaced_host(given, "backend.example:8001")
    assert fast.raw == public.raw and fast.encoding == public.encoding
    assert given.raw == httpx.Headers(headers).raw          # the caller's are untouched
    fast["X-Later"] = "works"                               # a usable Headers
    assert fast["x-later"] == "works"


@pytest.mark.parametrize("headers", HEADERS)
def test_the_host_is_found_as_get_finds_it_and_where_it_is(headers):
    given = httpx.Headers(headers)
    value, position = outgoing._host_position_parsed(given)
    assert (value, position) == outgoing.host_position(given)
    assert value == (given["Host"].encode("ascii") if "Host" in given else None)
    names = [name.lower() for name, _ in given.raw]
    expected = {0: -1, 1: names.index(b"host") if b"host" in names else -1}
    assert position == expected.get(names.count(b"host"), outgoing.SEVERAL)


@pytest.mark.parametrize("headers", HEADERS)
def test_the_host_is_placed_where_it_was_found_as_setting_it_would(headers):
    given = httpx.Headers(headers)
    _, position = outgoing.find_host(given)
    fast = outgoing._placed_host_parsed(given, position, "backend.example:8001")
    public = outgoing.placed_host(given, position, "backend.example:8001")
    assert fast.raw == public.raw == outgoing.replaced_host(given, "backend.example:8001").raw
    assert fast.encoding == public.encoding
    assert given.raw == httpx.Headers(headers).raw          # the caller's are untouched


def test_the_request_is_the_one_the_constructor_builds():
    url, headers = httpx.URL("http://127.0.0.1:1/x"), httpx.Headers({"Host": "a"})
    stream, extensions = httpx.ByteStream(b"body"), {"timeout": {"read": 1.0}}
    fast = outgoing._new_request_set("POST", url, headers, stream, extensions)
    public = outgoing.new_request("POST", url, headers, stream, extensions)
    assert vars(fast) == vars(public)
    assert fast.read() == b"body"


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("headers", HEADERS)
def test_the_attempts_request_in_one_call_is_the_one_the_public_ways_build(base, target,
                                                                           headers):
    caller = httpx.Request("PUT", target, content=b"body")
    caller.headers = httpx.Headers(headers)
    backend = httpx.URL(lb.Backend(base).url)
    extensions = {"timeout": {"read": 1.0}}
    _, position = outgoing.find_host(caller.headers)
    for host_at in (None, position):
        fast = outgoing._attempt_request_parsed(caller, backend, host_at, "b.example:81",
                                                extensions)
        public = outgoing.attempt_request(caller, backend, host_at, "b.example:81",
                                          extensions)
        assert fast.url == public.url
        assert fast.url.raw_path == public.url.raw_path
        assert fast.headers.raw == public.headers.raw
        assert vars(fast).keys() == vars(public).keys()
        assert (fast.method, fast.extensions, fast.read()) == ("PUT", extensions, b"body")
    assert caller.headers.raw == httpx.Headers(headers).raw     # the caller's are untouched


@pytest.mark.parametrize("exc, sent, timeout, words", [
    (httpx.ConnectError("[Errno 111] Connection refused"), False, False, "connection refused"),
    (httpx.ConnectTimeout(""), False, True, "connect timed out"),
    (httpx.ReadTimeout("timed out"), True, True, "read timed out"),
    (httpx.WriteTimeout("timed out"), True, True, "write timed out"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), True,
     False, "the connection was closed without a response"),
    (httpx.ReadError("[Errno 104] Connection reset by peer"), True, False,
     "connection reset by peer"),
    (httpx.RemoteProtocolError("peer closed connection without sending complete message body "
                               "(incomplete chunked read)"), True, False,
     "the response ended early (incomplete chunked read)"),
])
def test_a_backends_failure_becomes_an_outcome_in_every_front_ends_words(exc, sent, timeout,
                                                                           words):
    """The words of adapter/errors.py and asgi/exchange.py for the same failures."""
    outcome = failure(exc, 0.25)
    assert (outcome.ok, outcome.sent, outcome.timeout, outcome.latency) == \
        (False, sent, timeout, 0.25)
    assert outcome.error == words


def test_a_timeout_names_the_limit_that_ran_out_and_a_full_pool_is_not_sent():
    limits = {"connect": 0.5, "read": 2.0, "write": 5.0, "pool": 0.25}
    assert failure(httpx.ReadTimeout("timed out"), 2.0, limits).error == \
        "read timed out after 2s"
    assert failure(httpx.ConnectTimeout(""), 0.5, limits).error == \
        "connect timed out after 500ms"
    full = failure(httpx.PoolTimeout(""), 0.25, limits)
    assert (full.ok, full.sent, full.timeout, full.latency) == (False, False, True, None)
    assert full.error == "no free connection within 250ms (the backend's connection pool is " \
                         "full)"


@pytest.mark.parametrize("exc", [httpx.ProxyError("proxy says no"),
                                 httpx.LocalProtocolError("bad header"),
                                 httpx.UnsupportedProtocol("ftp")])
def test_what_is_not_the_backends_fault_is_raised_as_it_is(exc):
    with pytest.raises(type(exc)) as info:
        failure(exc, 0.1)
    assert info.value is exc


def test_the_callers_error_names_the_backends_tried():
    request = httpx.Request("GET", "http://svc/x")
    tried = [lb.Backend("http://127.0.0.1:1"), lb.Backend("http://127.0.0.1:2")]
    named = naming_backends(httpx.ReadTimeout("timed out"), request, tried)
    assert type(named) is httpx.ReadTimeout
    assert str(named) == "timed out (backends tried: http://127.0.0.1:1, http://127.0.0.1:2)"
    assert named.request is request
    assert named.backends_tried == ("http://127.0.0.1:1", "http://127.0.0.1:2")


@pytest.mark.parametrize("message", ["timed out", ""])
def test_an_error_the_deadline_caused_says_so_first_then_the_failures_own_words(message):
    """httpx's async ReadTimeout has no message: its words then are every front-end's."""
    request = httpx.Request("GET", "http://svc/x")
    deadline = "the request's 1s deadline (LB_TIMEOUT) ran out"
    named = naming_backends(httpx.ReadTimeout(message), request,
                            [lb.Backend("http://127.0.0.1:1")], deadline, deadline)
    assert type(named) is httpx.ReadTimeout
    assert str(named) == (f"{deadline}: {message or 'read timed out'} (backends tried: "
                          "http://127.0.0.1:1)")
    assert named.deadline == deadline
