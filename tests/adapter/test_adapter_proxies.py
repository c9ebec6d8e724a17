"""The adapter decides proxies from the backend URL it calls (issue 14, item 7): requests'
Session reads ``HTTP_PROXY`` / ``NO_PROXY`` for the URL the caller named, the virtual host,
which no proxy rule names; the adapter redoes requests' reading for each backend's URL.

A real forward proxy on loopback (tests/support/forward_proxy.py) says what went through it;
the backends say whether a request came through it (its ``Via``).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.forward_proxy import ForwardProxy
from ..support.wsgi_client import call, environ_for

VHOST = "http://svc"
VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"server": self.server.server_address[0],
                           "via": self.headers.get("Via")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo() -> Iterator[dict[str, str]]:
    """Backends on two loopback addresses, answering their address and the request's Via:
    {"127.0.0.1": url, "127.0.0.2": url}."""
    servers = [http.server.ThreadingHTTPServer((host, 0), _Echo)
               for host in ("127.0.0.1", "127.0.0.2")]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.01},
                                daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield {s.server_address[0]: f"http://{s.server_address[0]}:{s.server_address[1]}"
           for s in servers}
    for server, thread in zip(servers, threads, strict=True):
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as forward:
        yield forward


@pytest.fixture
def environment(monkeypatch):
    """Sets the proxy variables given (lower case), every other one cleared."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)

    def set_(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_


def _session(backends, **session: object) -> requests.Session:
    client = requests.Session()
    for name, value in session.items():
        setattr(client, name, value)
    client.mount(f"{VHOST}/", LoadBalancingAdapter(backends))
    return client


def _calls(client: requests.Session, times: int = 2, **kwargs) -> dict[str, str | None]:
    """The backend address -> the Via it saw, over ``times`` calls (round robin)."""
    seen = {}
    for _ in range(times):
        answer = client.get(f"{VHOST}/x", timeout=5, **kwargs).json()
        seen[answer["server"]] = answer["via"]
    return seen


def test_no_proxy_naming_a_backend_reaches_it_directly(echo, proxy, environment):
    environment(http_proxy=proxy.url, no_proxy="127.0.0.2/32")
    with _session(list(echo.values())) as client:
        seen = _calls(client)
    assert seen == {"127.0.0.1": "1.1 test-proxy", "127.0.0.2": None}
    assert proxy.forwarded == [f"{echo['127.0.0.1']}/x"]        # the backend's URL


def test_no_proxy_naming_the_virtual_host_does_not_spare_the_backends(echo, proxy,
                                                                    environment):
    environment(http_proxy=proxy.url, no_proxy="svc")
    with _session(list(echo.values())) as client:
        seen = _calls(client)
    assert seen == {"127.0.0.1": "1.1 test-proxy", "127.0.0.2": "1.1 test-proxy"}
    assert sorted(proxy.forwarded) == sorted(f"{url}/x" for url in echo.values())


def test_without_no_proxy_every_backend_goes_through_the_proxy(echo, proxy, environment):
    environment(http_proxy=proxy.url)
    with _session([echo["127.0.0.1"]]) as client:
        assert _calls(client, 1) == {"127.0.0.1": "1.1 test-proxy"}


@pytest.mark.parametrize("no_proxy", ["", "svc"])
def test_a_session_that_does_not_trust_the_environment_uses_no_proxy(echo, proxy,
                                                                     environment, no_proxy):
    """``Session.trust_env = False``: no environment proxy, for any backend. (With NO_PROXY
    naming the virtual host the Session's choice cannot be seen from the adapter: the
    environment is then read, as requests' default trust_env says.)"""
    environment(http_proxy=proxy.url, no_proxy=no_proxy)
    with _session(list(echo.values()), trust_env=False) as client:
        seen = _calls(client)
    if no_proxy:
        assert seen == {"127.0.0.1": "1.1 test-proxy", "127.0.0.2": "1.1 test-proxy"}
    else:
        assert seen == {"127.0.0.1": None, "127.0.0.2": None} and proxy.forwarded == []


def test_proxies_given_to_the_call_are_chosen_by_the_backends_url(echo, proxy, environment):
    """``proxies=`` keyed by a backend's scheme and host applies to that backend (requests'
    own select_proxy, on the URL the adapter calls); one for the scheme applies to all, NO_PROXY
    notwithstanding (requests' rule: what the caller gives wins over the environment)."""
    environment(no_proxy="127.0.0.0/8")
    with _session(list(echo.values())) as client:
        seen = _calls(client, proxies={"http://127.0.0.2": proxy.url})
        assert seen == {"127.0.0.1": None, "127.0.0.2": "1.1 test-proxy"}
        seen = _calls(client, proxies={"http": proxy.url})
        assert seen == {"127.0.0.1": "1.1 test-proxy", "127.0.0.2": "1.1 test-proxy"}


def test_a_no_proxy_given_to_the_call_is_read_for_the_backends_url(echo, proxy, environment):
    environment(http_proxy=proxy.url)
    with _session(list(echo.values())) as client:
        seen = _calls(client, proxies={"no_proxy": "127.0.0.1"})
    assert seen == {"127.0.0.1": None, "127.0.0.2": "1.1 test-proxy"}


def test_the_wsgi_middleware_reaches_its_backends_directly(echo, proxy, environment):
    """A reverse proxy calls its backends itself (nginx, the ASGI middleware's upstream
    client): the environment's proxies are not its business."""
    environment(http_proxy=proxy.url)
    middleware = WSGILoadBalancer(None, backends=[echo["127.0.0.1"]])
    try:
        result = call(middleware, environ_for("GET", "/x"))
    finally:
        middleware.close()
    assert result.code == 200 and result.json()["via"] is None
    assert proxy.forwarded == []


def test_a_backend_found_by_dns_is_decided_by_its_address(echo, proxy, environment):
    """The URL the adapter calls holds the backend's address (a DNS source's backend names
    its server only in Host and TLS): NO_PROXY is read for that address."""
    environment(http_proxy=proxy.url, no_proxy="127.0.0.2")
    named = lb.Backend(echo["127.0.0.2"], server_name="echo.internal")
    with _session([named]) as client:
        assert _calls(client, 1) == {"127.0.0.2": None}


def test_a_change_of_the_variables_is_seen_at_the_next_call(echo, proxy, environment):
    """The adapter keeps requests' answers per values of the variables: a new NO_PROXY
    counts at once, as it does for requests itself."""
    environment(http_proxy=proxy.url)
    with _session([echo["127.0.0.1"]]) as client:
        assert _calls(client, 1) == {"127.0.0.1": "1.1 test-proxy"}
        environment(no_proxy="127.0.0.1")
        assert _calls(client, 1) == {"127.0.0.1": None}
        environment(no_proxy="", NO_PROXY="")
        assert _calls(client, 1) == {"127.0.0.1": "1.1 test-proxy"}
