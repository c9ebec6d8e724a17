"""Proxies as the environment names them, read as plain httpx reads them, for the real URL
each inner transport reaches (lbmiddleware/transport/proxies.py); and handed to httpx as an
``httpx.Proxy``, the one form every httpx the ``httpx`` extra accepts takes."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from lbmiddleware.transport import LoadBalancingTransport, proxies
from lbmiddleware.transport.base import TransportOptions

from .test_transport import PROXY_VARIABLES

VHOST = "http://svc"


@pytest.fixture
def proxy_environment(monkeypatch):
    """Sets the proxy variables given (lower case), the others cleared."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def set_(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"server": "v6", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


@pytest.fixture
def v6_backend() -> Iterator[str]:
    """An HTTP server on the IPv6 loopback answering its name and the path it got."""
    server = _V6Server(("::1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield f"http://[::1]:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(2)


def test_a_proxy_named_without_a_scheme_is_an_http_proxy(servers, proxy_environment):
    """``http_proxy=host:port``: plain httpx (and curl) goes through ``http://host:port``;
    so does the transport, rather than failing every request on 'Unknown scheme'."""
    a, proxy = servers("a"), servers("proxy")
    proxy_environment(http_proxy=f"127.0.0.1:{proxy.port}")
    assert httpx.get(f"{a.url}/x").json()["server"] == "proxy"
    with httpx.Client(transport=LoadBalancingTransport([a.url])) as client:
        echo = client.get(f"{VHOST}/x").json()
    assert (echo["server"], echo["path"]) == ("proxy", f"{a.url}/x")


def test_no_proxy_naming_an_ipv6_backend_is_honoured(servers, proxy_environment, v6_backend):
    proxy = servers("proxy")
    proxy_environment(http_proxy=proxy.url, no_proxy="::1")
    assert httpx.get(f"{v6_backend}/x").json()["server"] == "v6"
    with httpx.Client(transport=LoadBalancingTransport([v6_backend])) as client:
        assert client.get(f"{VHOST}/x").json()["server"] == "v6"
    assert proxy.requests == 0


@pytest.mark.parametrize("reading", ["httpx", "urllib"])
def test_both_readings_agree_with_httpx(proxy_environment, monkeypatch, reading):
    """httpx's private reading, and the standard library's that stands in when httpx moves
    it, give what plain httpx uses for the same URLs."""
    if reading == "urllib":
        monkeypatch.setattr(proxies, "_from_httpx", None)
    else:
        assert proxies._from_httpx is not None        # this httpx has it
    proxy_environment(http_proxy="127.0.0.1:3128", https_proxy="http://tls-proxy:8080",
                      no_proxy="::1,internal.example,10.0.0.1:8443")
    cases = {"http://[::1]:8001": None, "http://127.0.0.1:8001": "http://127.0.0.1:3128",
             "https://api.internal.example": None, "https://10.0.0.1:8443": None,
             "https://10.0.0.1:9443": "http://tls-proxy:8080"}
    for url, expected in cases.items():
        proxy = proxies.environment_proxy(httpx.URL(url))
        assert (None if proxy is None else str(proxy.url)) == expected, url


def test_every_proxy_reaches_httpx_as_an_httpx_proxy(proxy_environment):
    """httpx 0.24 and 0.25 take ``proxy=`` as an ``httpx.Proxy`` only (a str raised
    AttributeError there): from the environment and from the keyword alike."""
    proxy_environment(http_proxy="http://127.0.0.1:3128")
    backend = httpx.URL("http://127.0.0.1:8001")
    from_env = TransportOptions().proxy_for(backend)
    given = TransportOptions(proxy="http://127.0.0.1:9999").proxy_for(backend)
    assert isinstance(from_env, httpx.Proxy) and str(from_env.url) == "http://127.0.0.1:3128"
    assert isinstance(given, httpx.Proxy) and str(given.url) == "http://127.0.0.1:9999"
    assert TransportOptions(trust_env=False).proxy_for(backend) is None
