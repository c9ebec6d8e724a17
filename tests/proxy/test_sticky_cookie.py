"""The sticky cookie as every front-end reads and writes it (lbmiddleware.proxy.sticky)."""

from __future__ import annotations

import pytest

from lbmiddleware.proxy import StickyCookie


def test_read_finds_the_named_cookie_among_others():
    cookie = StickyCookie("lb")
    assert cookie.read("sid=1; lb=628591f9d2e4df92; x=2") == "628591f9d2e4df92"
    assert cookie.read("lb2=a; xlb=b") is None
    assert cookie.read('lb="quoted"') == "quoted"
    assert cookie.read(None) is None and cookie.read("") is None
    assert cookie.read("lb=first; lb=second") == "first"


def test_read_binary_looks_in_every_cookie_header_in_any_case():
    cookie = StickyCookie("lb")
    headers = [(b"host", b"x"), (b"Cookie", b"sid=1"), (b"cookie", b"lb=abc")]
    assert cookie.read_binary(headers) == "abc"
    assert cookie.read_binary([(b"cookie", b"sid=lb")]) is None
    assert cookie.read_binary([]) is None


def test_set_cookie_is_a_scoped_http_only_session_cookie():
    assert StickyCookie("lb", "/api").set_cookie("abc", secure=False) == (
        "lb=abc; Path=/api; HttpOnly; SameSite=Lax")
    assert StickyCookie("lb").set_cookie("abc", secure=True) == (
        "lb=abc; Path=/; HttpOnly; SameSite=Lax; Secure")


@pytest.mark.parametrize("name, path", [("", "/"), ("lb", "api"), ("lb", "/a;b")])
def test_a_bad_name_or_path_is_refused(name, path):
    with pytest.raises(ValueError):
        StickyCookie(name, path)
