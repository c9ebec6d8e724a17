"""One table of cases through both kinds of the proxy's rules: ``TEXT`` (str headers: WSGI,
the requests adapter) and ``BINARY`` (bytes headers: ASGI and the gateway's fast path), which
must give the same answers, the expected ones, for names in any case, the first time a name
is met and after (the rules remember each name's meaning as it was spelled)."""

from __future__ import annotations

import random

import pytest

import lbmiddleware as lb
from lbmiddleware.proxy import BINARY, TEXT, HeaderRules, NotProxied, UnsafeRequest, join_target
from lbmiddleware.proxy.redirects import RedirectRule

PEER = "198.51.100.9"
XFF, XFP, XFH = "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"
# The `_` spellings the request rules drop (a WSGI server merges them with the real header).
SPOOFS = ["X_Forwarded_Host", "x_forwarded_proto", "X_FORWARDED_FOR", "x_forwarded_port",
          "X_Forwarded_Prefix", "X_Real_IP", "Proxy_Authorization", "Proxy_Connection",
          "Keep_Alive", "Transfer_Encoding", "Content_Length", "Proxy_"]
# `_` spellings of nothing the rules guard: kept.
UNGUARDED = ["X_Request_Id", "X_Forwarded", "Forwarded_", "_Host", "X__Forwarded_For"]

# id -> (headers received, options, expected upstream headers or the exception, expected
# body length or the exception). Options: peer (default PEER), scheme (default "http"),
# upstream_host, preserve_host, trusted_peer.
REQUESTS: dict[str, tuple[list[tuple[str, str]], dict, object, object]] = {
    "plain": (
        [("Host", "front.example"), ("Accept", "*/*")], {},
        [("Accept", "*/*"), (XFF, PEER), (XFP, "http"), (XFH, "front.example")], 0),
    "a WSGI server's headers": (
        [("Host", "front"), ("Connection", "x-a"), ("X-A", "1"), ("Content-Length", "3"),
         ("X-Forwarded-For", "1.1.1.1"), ("Accept", "*/*")], {"peer": "2.2.2.2"},
        [("Accept", "*/*"), (XFF, "1.1.1.1, 2.2.2.2"), (XFP, "http"), (XFH, "front")], 3),
    "hop-by-hop": (
        [("Host", "front"), ("Connection", "keep-alive"), ("Keep-Alive", "300"),
         ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "x"),
         ("Upgrade", "h2c"), ("Accept", "*/*")], {},
        [("Accept", "*/*"), (XFF, PEER), (XFP, "http"), (XFH, "front")], 0),
    "connection names headers": (
        [("Host", "front"), ("Connection", "Keep-Alive, X-Secret ,x-other"), ("X-Secret", "s"),
         ("x-other", "o"), ("connection", "X-Third"), ("X-THIRD", "t"), ("X-Kept", "k"),
         ("Connection", "close")], {},
        [("X-Kept", "k"), (XFF, PEER), (XFP, "http"), (XFH, "front")], 0),
    "connection names a forwarding header": (
        [("Connection", "x-forwarded-for, host"), ("X-Forwarded-For", "1.2.3.4"),
         ("Host", "front")], {},
        [(XFF, f"1.2.3.4, {PEER}"), (XFP, "http"), (XFH, "front")], 0),
    "connection with empty tokens": (
        [("Connection", " , ,Upgrade,,TE"), ("X-A", "1")], {},
        [("X-A", "1"), (XFF, PEER), (XFP, "http")], 0),
    "underscored spoofs": (
        [("Host", "real.example"), *[(name, "evil.example") for name in SPOOFS],
         *[(name, "7") for name in UNGUARDED], ("Accept", "*/*")], {},
        [*[(name, "7") for name in UNGUARDED], ("Accept", "*/*"), (XFF, PEER),
         (XFP, "http"), (XFH, "real.example")], 0),
    "x-forwarded-* from an untrusted peer": (
        [("Host", "front"), ("X-Forwarded-For", " 1.2.3.4 "), ("x-forwarded-for", "5.6.7.8"),
         ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")],
        {"scheme": "https"},
        [(XFF, f"1.2.3.4, 5.6.7.8, {PEER}"), (XFP, "https"), (XFH, "front")], 0),
    "x-forwarded-* from a trusted peer": (
        [("Host", "inner"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http"),
         ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "public.example")],
        {"trusted_peer": True},
        [(XFF, f"1.2.3.4, {PEER}"), (XFP, "https"), (XFH, "public.example")], 0),
    "a trusted peer that set none": (
        [("Host", "inner")], {"trusted_peer": True, "scheme": "https"},
        [(XFF, PEER), (XFP, "https"), (XFH, "inner")], 0),
    "empty x-forwarded-for, no peer": (
        [("X-Forwarded-For", "  "), ("X-Forwarded-For", "")], {"peer": None},
        [(XFP, "http")], 0),
    "no peer, a client's list": (
        [("X-Forwarded-For", "1.2.3.4")], {"peer": None, "scheme": "wss"},
        [(XFF, "1.2.3.4"), (XFP, "wss")], 0),
    "an empty peer": ([], {"peer": ""}, [(XFP, "http")], 0),
    "host replaced": (
        [("Host", "front"), ("host", "second"), ("Accept", "*/*")],
        {"upstream_host": "127.0.0.1:8001"},
        [("Host", "127.0.0.1:8001"), ("Accept", "*/*"), (XFF, PEER), (XFP, "http"),
         (XFH, "front")], 0),
    "host preserved": (
        [("Accept", "*/*"), ("HOST", "front")], {"preserve_host": True,
                                                 "upstream_host": "ignored"},
        [("Host", "front"), ("Accept", "*/*"), (XFF, PEER), (XFP, "http"), (XFH, "front")],
        0),
    "no host at all": ([("Accept", "*/*")], {"preserve_host": True},
                       [("Accept", "*/*"), (XFF, PEER), (XFP, "http")], 0),
    "repeated headers kept in order": (
        [("Cookie", "a=1"), ("X-A", "1"), ("cookie", "b=2"), ("x-a", "2")], {},
        [("Cookie", "a=1"), ("X-A", "1"), ("cookie", "b=2"), ("x-a", "2"), (XFF, PEER),
         (XFP, "http")], 0),
    "latin-1 values": (
        [("X-Name", "caf\xe9 \xa0"), ("Host", "h\xf4te")], {},
        [("X-Name", "caf\xe9 \xa0"), (XFF, PEER), (XFP, "http"), (XFH, "h\xf4te")], 0),
    "CR in a value": ([("X-A", "v\r\nInjected: 1")], {}, UnsafeRequest, 0),
    "LF in a value": ([("Accept", "*/*"), ("X-A", "v\nInjected: 1")], {}, UnsafeRequest, 0),
    "NUL in a value": ([("X-A", "v\x00")], {}, UnsafeRequest, 0),
    "CR in a dropped header": ([("Keep-Alive", "1\r\n")], {}, UnsafeRequest, 0),
    "LF in a name": ([("X-A\nInjected", "1")], {}, UnsafeRequest, 0),
    "NUL in a long name": ([("X" * 100 + "\x00", "1")], {}, UnsafeRequest, 0),
    "CR in the host": ([("Host", "a\r\nb")], {}, UnsafeRequest, 0),
    "CR in the framing": ([("Content-Length", "5\r")], {}, UnsafeRequest, 5),
    "a websocket handshake": (
        [("Host", "front"), ("Connection", "Upgrade"), ("Upgrade", "websocket")], {},
        NotProxied, 0),
    "a websocket handshake, lists in any case": (
        [("Upgrade", "h2c, WebSocket"), ("Connection", "keep-alive, UPGRADE")], {},
        NotProxied, 0),
    "websocket without connection: upgrade": (
        [("Upgrade", "websocket"), ("Connection", "keep-alive")], {},
        [(XFF, PEER), (XFP, "http")], 0),
    "connection: upgrade without websocket": (
        [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"),
         ("HTTP2-Settings", "AAA")], {},
        [(XFF, PEER), (XFP, "http")], 0),
    "a websocket handshake with a bad length (501 first)": (
        [("Connection", "upgrade"), ("Upgrade", "websocket"), ("Content-Length", "x")], {},
        NotProxied, UnsafeRequest),
    "content-length": ([("Content-Length", " 12 "), ("Content-Type", "text/plain")], {},
                       [("Content-Type", "text/plain"), (XFF, PEER), (XFP, "http")], 12),
    "content-length repeated alike": (
        [("content-length", "5"), ("Content-Length", "5")], {},
        [(XFF, PEER), (XFP, "http")], 5),
    "content-length zero": ([("Content-Length", "0")], {}, [(XFF, PEER), (XFP, "http")], 0),
    "transfer-encoding": ([("Transfer-Encoding", "chunked")], {},
                          [(XFF, PEER), (XFP, "http")], None),
    "TE and CL": ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], {},
                  [(XFF, PEER), (XFP, "http")], None),
    "CL and TE the other way": ([("Transfer-Encoding", "gzip, chunked"),
                                 ("Content-Length", "5")], {},
                                [(XFF, PEER), (XFP, "http")], None),
    "TE before a bad CL": ([("Transfer-Encoding", "chunked"), ("Content-Length", "x")], {},
                           [(XFF, PEER), (XFP, "http")], None),
    "a bad CL before TE": ([("Content-Length", "x"), ("Transfer-Encoding", "chunked")], {},
                           [(XFF, PEER), (XFP, "http")], UnsafeRequest),
    "conflicting CL": ([("Content-Length", "5"), ("Content-Length", "6")], {},
                       [(XFF, PEER), (XFP, "http")], UnsafeRequest),
    **{f"bad CL {value!r}": ([("Content-Length", value)], {}, [(XFF, PEER), (XFP, "http")],
                             UnsafeRequest)
       for value in ["-1", "1e3", "x", "", "5, 5", "+5", "0x10", "\xb2", "1 2"]},
    "underscored framing is not framing": (
        [("Content_Length", "x"), ("Transfer_Encoding", "chunked")], {},
        [(XFF, PEER), (XFP, "http")], 0),
}


def _bytes(value):
    """A str case in the bytes kind (latin-1, as on the wire); other values as they are."""
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, list):
        return [_bytes(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_bytes(v) for v in value)
    if isinstance(value, dict):
        return {key: _bytes(v) for key, v in value.items()}
    return value


def _outcome(call):
    try:
        return call()
    except UnsafeRequest as exc:
        return type(exc), exc.status


def _expected(value):
    if isinstance(value, type):
        return value, value.status
    return value


def _answers(rules, headers, options):
    """What each request rule answers for ``headers``, exceptions as (class, status)."""
    options = {"peer": PEER, "scheme": "http", **options}
    return {
        "request_headers": _outcome(lambda: rules.request_headers(headers, **options)),
        "request": _outcome(lambda: rules.request(headers, **options)),
        "body_length": _outcome(lambda: rules.body_length(headers)),
        "get": _outcome(lambda: rules.get(headers, "x-forwarded-for")),
    }


SPELLINGS = {"as sent": lambda name: name, "lower-case": str.lower, "upper-case": str.upper}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("case", REQUESTS)
def test_both_kinds_give_the_expected_answers_to_every_request(case, spelling):
    received, options, upstream, length = REQUESTS[case]
    spell = SPELLINGS[spelling]
    received = [(spell(name), value) for name, value in received]
    if isinstance(upstream, list):      # the names the rules set are spelled as they set them
        upstream = [(name if name in (XFF, XFP, XFH, "Host") else spell(name), value)
                    for name, value in upstream]
    text_options = dict(options)
    binary_options = {key: _bytes(value) if key == "upstream_host" else value
                      for key, value in options.items()}
    fresh = (HeaderRules(str), HeaderRules(bytes))     # every name met for the first time
    for text_rules, binary_rules in (fresh, fresh, (TEXT, BINARY), (TEXT, BINARY)):
        text = _answers(text_rules, received, text_options)
        binary = _answers(binary_rules, _bytes(received), binary_options)
        assert binary == _bytes(text)
        assert text["request_headers"] == _expected(upstream)
        assert text["body_length"] == _expected(length)
        # request() is request_headers() then body_length(): the first refusal wins
        if isinstance(upstream, type):
            assert text["request"] == _expected(upstream)
        elif isinstance(length, type):
            assert text["request"] == _expected(length)
        else:
            assert text["request"] == (upstream, length)


def test_request_headers_collect_the_framing_headers_when_asked():
    # (what request() reads the body's length from, in the same pass)
    received = [("Host", "front"), ("Content-Length", "3"), ("Transfer-Encoding", "chunked"),
                ("content-length", " 3 "), ("Accept", "*/*")]
    for rules, word in ((TEXT, lambda value: value), (BINARY, _bytes)):
        framing: list = []
        out = rules.request_headers(word(received), PEER, "http", framing=framing)
        assert out == rules.request_headers(word(received), PEER, "http")
        assert framing == [word("3"), None, word(" 3 ")]


def test_what_the_rules_remember_stays_bounded_and_never_holds_an_unsafe_name():
    rules = HeaderRules(bytes)
    for index in range(3000):
        name = b"x-name-%d" % index
        assert rules.request_headers([(name, b"1"), (b"HOST", b"h")], peer=None,
                                     scheme="http") == [(name, b"1"), (b"X-Forwarded-Proto",
                                                                      b"http"),
                                                        (b"X-Forwarded-Host", b"h")]
        assert rules.response_headers([(name.upper(), b"1"), (b"Date", b"d")]) == [
            (name.upper(), b"1")]
        assert len(rules._request_actions) <= 1024 and len(rules._response_actions) <= 1024
    for _ in range(2):              # refused again: never remembered as checked
        for name in (b"x-a\r\nb", b"x-a\x00", b"x" * 100 + b"\n"):
            with pytest.raises(UnsafeRequest):
                rules.request_headers([(name, b"1")], peer=None, scheme="http")
            assert name not in rules._request_actions
    long = b"x" * 65                # long names are checked each time, not remembered
    for _ in range(2):
        assert rules.request_headers([(long, b"1")], peer=None, scheme="http")[0] == (long,
                                                                                      b"1")
        assert long not in rules._request_actions
    # the names the rules compare are still found in any case, once the table started over
    assert rules.request_headers([(b"X_FORWARDED_HOST", b"e"), (b"Connection", b"x-a"),
                                  (b"X-A", b"1")], peer=None, scheme="http") == [
        (b"X-Forwarded-Proto", b"http")]


# id -> (base path, path, query, expected target or the exception)
TARGETS: dict[str, tuple[str, str, str | None, object]] = {
    "plain": ("", "/a/b", "x=1", "/a/b?x=1"),
    "no query": ("", "/a/b", None, "/a/b"),
    "empty query": ("", "/a", "", "/a"),
    "base path": ("/v1", "/a", "q", "/v1/a?q"),
    "//evil": ("", "//evil.example/x", None, "//evil.example/x"),
    "/http://evil": ("", "/http://evil.example/", None, "/http://evil.example/"),
    "backslash": ("", "/\\evil.example", None, "/\\evil.example"),
    "@evil": ("/v1", "@evil.example", None, "/v1@evil.example"),
    "no slash": ("", "no-slash", "q=1", "/no-slash?q=1"),
    "empty": ("", "", "", "/"),
    "only a query": ("", "", "x=1", "/?x=1"),
    "spaces": ("", "/a b", "q=a b", "/a%20b?q=a%20b"),
    "hash": ("", "/a#b", "c#d", "/a%23b?c%23d"),
    "controls and DEL": ("", "/a\tb\x7f\x1f", None, "/a%09b%7F%1F"),
    "non-ASCII": ("", "/caf\xe9/\u00fc\u20ac", "q=\xe9", "/caf%C3%A9/%C3%BC%E2%82%AC?q=%C3%A9"),
    "surrogate-escaped bytes": ("", "/a\udcff", None, "/a%FF"),
    "%-encodings kept": ("", "/a%2Fb%20c%zz", "x=%41%", "/a%2Fb%20c%zz?x=%41%"),
    "question marks": ("", "/a?b", "c?d", "/a?b?c?d"),
    "every plain character": ("", "/!\"$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~", None,
                              "/!\"$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"),
    "CR in the path": ("", "/a\r\nHost: evil", None, UnsafeRequest),
    "LF in the path": ("", "/a\nb", None, UnsafeRequest),
    "NUL in the path": ("", "/a\x00", None, UnsafeRequest),
    "CR in the query": ("", "/a", "x=1\r\nEvil: 1", UnsafeRequest),
    "NUL in the base": ("/v\x00", "/a", None, UnsafeRequest),
}


@pytest.mark.parametrize("case", TARGETS)
def test_both_kinds_give_the_expected_target(case):
    base, path, query, expected = TARGETS[case]

    def raw(text):
        return None if text is None else text.encode("utf-8", "surrogateescape")

    text = _outcome(lambda: join_target(base, path, query))
    binary = _outcome(lambda: join_target(raw(base), raw(path), raw(query)))
    assert text == _expected(expected)
    assert binary == (text.encode("ascii") if isinstance(text, str) else text)


BACKEND = lb.Backend("http://127.0.0.1:8001")
UPSTREAM = [("Host", "127.0.0.1:8001"), (XFP, "https"), (XFH, "front.example")]

# id -> (response headers, expected headers for the client)
RESPONSES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "plain": ([("Content-Type", "text/plain"), ("Content-Length", "3")],
              [("Content-Type", "text/plain"), ("Content-Length", "3")]),
    "hop-by-hop and hidden": (
        [("Set-Cookie", "a=1"), ("Connection", "close, X-Hop"), ("X-Hop", "h"),
         ("Keep-Alive", "timeout=5"), ("Set-Cookie", "b=2"), ("Upgrade", "h2c"),
         ("Trailer", "x"), ("Date", "today"), ("Server", "uvicorn"), ("Proxy-Connection", "x"),
         ("TE", "t"), ("Content-Type", "text/plain"), ("Content-Length", "3")],
        [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Type", "text/plain"),
         ("Content-Length", "3")]),
    "connection keep-alive": ([("Connection", "keep-alive"), ("X-A", "1")], [("X-A", "1")]),
    "chunked drops the length": (
        [("Content-Length", "9"), ("Transfer-Encoding", "chunked"), ("X", "y")], [("X", "y")]),
    "relative location": ([("Location", "/next"), ("Refresh", "5; url=/x")],
                          [("Location", "/next"), ("Refresh", "5; url=/x")]),
    "location to the backend": (
        [("Location", "http://127.0.0.1:8001/new?x=1"),
         ("Content-Location", "//127.0.0.1:8001/c"),
         ("Refresh", "0; URL='http://127.0.0.1:8001/r'")],
        [("Location", "https://front.example/new?x=1"),
         ("Content-Location", "https://front.example/c"),
         ("Refresh", "0; URL='https://front.example/r'")]),
    "location elsewhere": ([("Location", "https://cdn.example/x")],
                           [("Location", "https://cdn.example/x")]),
    "latin-1 kept": ([("X-Name", "caf\xe9")], [("X-Name", "caf\xe9")]),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("case", RESPONSES)
def test_both_kinds_give_the_expected_response_headers(case, spelling):
    received, expected = RESPONSES[case]
    spell = SPELLINGS[spelling]
    received = [(spell(name), value) for name, value in received]
    expected = [(spell(name), value) for name, value in expected]
    rule = RedirectRule()
    fresh = (HeaderRules(str), HeaderRules(bytes))
    for text_rules, binary_rules in (fresh, fresh, (TEXT, BINARY)):
        text = text_rules.response_headers(received, rule.bind(BACKEND, UPSTREAM))
        binary = binary_rules.response_headers(_bytes(received),
                                               rule.bind(BACKEND, _bytes(UPSTREAM)))
        assert text == expected
        assert binary == _bytes(text)
        # without a rule, the redirects go as they came
        text = text_rules.response_headers(received)
        assert text == (received if case == "location to the backend" else expected)
        assert binary_rules.response_headers(_bytes(received)) == _bytes(text)


def test_a_relative_redirect_is_never_asked_about():
    asked = []

    def rewrite(name, value):
        asked.append((name, value))
        return None

    for rules, spell in ((TEXT, str), (BINARY, _bytes)):
        rules.response_headers([(spell("Location"), spell("/a")),
                                (spell("refresh"), spell("1; url=b")),
                                (spell("Content-Location"), spell("//h/c"))], rewrite)
    assert asked == [("content-location", "//h/c")] * 2


def test_both_kinds_agree_on_generated_requests_and_responses():
    """20,000 header lists made of the names the rules compare (any case, ``_`` spellings),
    others, and values that are lists, tokens, counts, URLs, CR/LF/NUL: the same answers
    from both kinds, the first time and after."""
    rng = random.Random(15)
    names = ["Host", "Connection", "Upgrade", "X-Forwarded-For", "X-Forwarded-Proto",
             "X-Forwarded-Host", "Content-Length", "Transfer-Encoding", "TE", "Keep-Alive",
             "Proxy-Connection", "X_Forwarded_Host", "X_Real_IP", "X_Other", "Location",
             "Content-Location", "Refresh", "Date", "Server", "Set-Cookie", "X-A", "X-B",
             "Forwarded", "a\r", "b\n", "c\x00", "X-" + "y" * 70]
    values = ["", " ", "keep-alive", "close", "Upgrade", "upgrade, X-A", "websocket", "h2c",
              "x-a, X-B", "5", " 7 ", "x", "chunked", "1.2.3.4", "https", "front", "/rel",
              "http://127.0.0.1:8001/a", "//127.0.0.1:8001/b", "5; url=//127.0.0.1:8001/c",
              "v\r\n", "\x00", "caf\xe9", ",,", "\xb2"]
    rule = RedirectRule("/api", strip_prefix=True)
    for _ in range(20_000):
        received = [(rng.choice([str, str.lower, str.upper])(rng.choice(names)),
                     rng.choice(values)) for _ in range(rng.randint(0, 8))]
        options = {"peer": rng.choice([None, "", PEER]),
                   "scheme": rng.choice(["http", "https", "ws"]),
                   "preserve_host": rng.random() < 0.5, "trusted_peer": rng.random() < 0.5}
        text = _answers(TEXT, received, options)
        assert _answers(BINARY, _bytes(received), options) == _bytes(text), received
        raw = _bytes(received)
        text = _outcome(lambda h=received: TEXT.response_headers(
            h, rule.bind(BACKEND, UPSTREAM)))
        binary = _outcome(lambda h=raw: BINARY.response_headers(
            h, rule.bind(BACKEND, _bytes(UPSTREAM))))
        assert binary == _bytes(text), received
