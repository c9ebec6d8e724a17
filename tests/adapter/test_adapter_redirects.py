"""What is particular to the requests adapter in the redirect rule (the rule for every
client front-end is in tests/contract/client_contract.py): requests' own redirect machinery
(``allow_redirects=False`` and ``response.next``, a 302 after a POST) sees the virtual URL,
and a backend's base path, server name and the virtual host's scheme and port are taken into
account. Backends build absolute URLs from the ``Host`` they got
(tests/support/redirect_backend.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter

from ..support.redirect_backend import RedirectBackend


@pytest.fixture
def two() -> Iterator[tuple[RedirectBackend, RedirectBackend]]:
    with RedirectBackend("r1") as r1, RedirectBackend("r2") as r2:
        yield r1, r2


def session_for(vhost: str, backends: list[str | lb.Backend]) -> requests.Session:
    session = requests.Session()
    session.mount(f"{vhost}/", LoadBalancingAdapter(backends))
    return session


def test_requests_sees_the_virtual_url_when_it_does_not_follow(two):
    with session_for("http://svc", [b.url for b in two]) as session:
        moved = session.get("http://svc/a/old?q=1", allow_redirects=False, timeout=5)
        assert moved.status_code == 302
        assert moved.headers["Location"] == "http://svc/a/new?q=1"
        assert moved.next is not None and moved.next.url == "http://svc/a/new?q=1"
        followed = session.send(moved.next, timeout=5)
    assert followed.headers["X-Server"] == "r2"          # the next backend: balanced


def test_a_302_after_a_post_is_followed_as_a_get_through_the_pool(two):
    r1, r2 = two
    with session_for("http://svc", [r1.url, r2.url]) as session:
        answer = session.post("http://svc/login/old", data=b"form", timeout=5)
    assert [r.status_code for r in answer.history] == [302]
    assert answer.request.method == "GET" and answer.url == "http://svc/login/new"
    assert (r1.requests, r2.requests) == (1, 1)


def test_a_base_path_a_server_name_and_the_virtual_hosts_scheme_and_port(two):
    """A backend found by DNS answers to its name (the Host it got, so the name it builds
    URLs with) under a base path; the virtual host is https on a port of its own."""
    r1, _ = two
    named = lb.Backend(f"{r1.url}/v1", server_name="api.internal")
    with session_for("https://svc:8443", [named]) as session:
        # (the backend is plain http: https://svc:8443 is only the name the caller uses)
        moved = session.get("https://svc:8443/a/old", allow_redirects=False, timeout=5)
        created = session.get("https://svc:8443/created", timeout=5)
    assert moved.json()["headers"]["Host"] == f"api.internal:{r1.port}"
    assert moved.headers["Location"] == "https://svc:8443/a/new"
    assert created.headers["Content-Location"] == "https://svc:8443/items/7"


def test_a_redirect_to_another_member_is_left_as_it_came(servers):
    """Only the backend that answered is recognised: a backend builds its own address from
    the Host it got and knows no other member's; one that names another member on purpose
    (a cluster's leader) is taken at its word."""
    a, b = servers("a"), servers("b")
    a.redirects = {"/leader": f"{b.url}/leader", "/self": f"{a.url}/self-new"}
    with session_for("http://svc", [a.url, b.url]) as session:
        pool = session.get_adapter("http://svc/").balancer
        pool.update([a.url])                     # a answers both
        to_b = session.get("http://svc/leader", allow_redirects=False, timeout=5)
        to_a = session.get("http://svc/self", allow_redirects=False, timeout=5)
    assert to_b.headers["Location"] == f"{b.url}/leader"
    assert to_a.headers["Location"] == "http://svc/self-new"
