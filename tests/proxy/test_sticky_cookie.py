"""The sticky cookie as every front-end reads and writes it (lbmiddleware.proxy.sticky)."""

from __future__ import annotations

import random

import pytest

from lbmiddleware.proxy import StickyCookie, parse_cookie


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


@pytest.mark.parametrize("header, value", [
    ("xlb=1; lb=2", "2"),                   # a name that ends another's
    ("lbx=1; lb=2", "2"), ("lb2=1", None),
    ("a=lb=1; lb=2", "2"),                  # the name inside another cookie's value
    ("a=x lb=1", None), ("lb lb=1", None), ("lb; lb=1", "1"), ("lb", None),
    (" lb = 1 ;x=2", "1"), ("\tlb\t=\t1\t", "1"), ("x=1;lb=2", "2"), (";;lb=3;", "3"),
    ("\xa0lb\x1c=\x85v\xa0", "v"),          # latin-1's whitespace, as str.strip reads it
    ('lb=""', ""), ('lb="', '"'), ('lb="a"b"', 'a"b'), ("lb='a'", "'a'"),
    ('a="x; lb=1"', '1"'),                  # ';' ends a cookie, quoted or not
    ("lb=", ""), ("lb=;lb=2", ""), ("LB=1", None), ("lb=a=b", "a=b"),
])
def test_read_takes_the_first_cookie_of_that_name_as_parse_cookie_reads_it(header, value):
    cookie = StickyCookie("lb")
    assert cookie.read(header) == value == parse_cookie(header).get("lb")
    assert cookie.read_binary([(b"cookie", header.encode("latin-1"))]) == value


@pytest.mark.parametrize("name, found", [
    ("a=b", None), (" lb", None), ("lb ", None), ("a;b", None),   # no cookie has it
    ("l b", "1")])
def test_a_name_is_read_as_parse_cookie_reads_it(name, found):
    cookie = StickyCookie(name)
    for header in [f"{name}=1", f"x=1; {name}=1", f"{name.strip()}=1"]:
        assert cookie.read(header) == parse_cookie(header).get(name)
    assert cookie.read(f"{name}=1") == found


def test_read_agrees_with_parse_cookie_on_generated_headers():
    """The search for one name (str.find and a slice) reads what parsing the whole header
    reads, on 20,000 headers made of the pieces that make the cases above."""
    rng = random.Random(12)
    names = ["lb", "xlb", "lbx", "l", "b", "", " lb", "lb ", "a"]
    pieces = ["lb", "=", ";", " ", "\t", "\xa0", '"', "1", "x", "lb=", "; ", "=lb"]
    cookie = StickyCookie("lb")
    for _ in range(20_000):
        parts = []
        for _ in range(rng.randint(0, 5)):
            if rng.random() < 0.6:
                parts.append(rng.choice(names) + rng.choice(["=", " =", "= "])
                             + "".join(rng.choices(pieces, k=rng.randint(0, 3))))
            else:
                parts.append("".join(rng.choices(pieces, k=rng.randint(0, 6))))
        header = rng.choice([";", "; ", " ;"]).join(parts)
        expected = parse_cookie(header).get("lb")
        assert cookie.read(header) == expected, header
        assert cookie.read_binary([(b"cookie", header.encode("latin-1"))]) == expected, header


def test_renewal_is_the_set_cookie_only_when_the_request_named_another_backend():
    cookie = StickyCookie("lb", "/api")
    assert cookie.renewal("abc", "abc", secure=False) is None
    assert cookie.renewal("abc", None, secure=True) == (
        "lb=abc; Path=/api; HttpOnly; SameSite=Lax; Secure")
    assert cookie.renewal("abc", "def", secure=False) == cookie.set_cookie("abc", secure=False)
