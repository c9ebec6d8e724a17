"""The httpx transports against real loopback backends: what is particular to httpx (the
inner transport per backend, proxies decided by the backend's real URL, a DNS backend's
TLS name, departures, closing). What every client front-end does is the client contract
(tests/contract/client_contract.py, run in test_transport_contract.py); the async
transport's cancellation and concurrency are in test_transport_async.py.
"""

from __future__ import annotations

import ssl
import threading

import httpx
import pytest

import lbmiddleware as lb
from lbmiddleware.transport import LoadBalancingTransport

from ..conftest import CERTIFICATE_NAME
from ..fleet.test_server_name import host_of, tls_backend  # noqa: F401  (a fixture)
from ..support.departures import closed_by_the_client, open_connections, record_unsubscribes
from ..support.etcd import EtcdServer
from ..support.waiting import wait_for

VHOST = "http://svc"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def client_for(transport: LoadBalancingTransport) -> httpx.Client:
    return httpx.Client(transport=transport)


# -- proxies, TLS names, the inner transports --------------------------------------------------

@pytest.fixture
def proxy_environment(monkeypatch):
    """Sets the proxy variables given (lower case, which the standard library reads first),
    the others cleared."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def set_(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_


def test_the_environments_proxy_is_decided_by_the_backends_real_url(servers,
                                                                    proxy_environment):
    """HTTP_PROXY applies, and NO_PROXY names backends (host:port), not the virtual host: the
    proxy (a backend echoing what reached it) gets a's request in absolute form."""
    a, b, proxy = servers("a"), servers("b"), servers("proxy")
    proxy_environment(http_proxy=proxy.url, no_proxy=f"127.0.0.1:{b.port}")
    client = client_for(LoadBalancingTransport([a.url, b.url]))
    served = [client.get(f"{VHOST}/x?y=1").json() for _ in range(2)]
    assert [echo["server"] for echo in served] == ["proxy", "b"]
    assert served[0]["path"] == f"http://127.0.0.1:{a.port}/x?y=1"
    assert (a.requests, b.requests, proxy.requests) == (0, 1, 1)

    untrusting = client_for(LoadBalancingTransport([a.url], trust_env=False))
    assert untrusting.get(f"{VHOST}/x").json()["server"] == "a"
    explicit = client_for(LoadBalancingTransport([b.url], proxy=proxy.url))
    assert explicit.get(f"{VHOST}/x").json()["path"] == f"http://127.0.0.1:{b.port}/x"


def test_tls_names_the_server_and_host_is_its_authority(tls_backend, certificate):  # noqa: F811
    backend = lb.Backend(tls_backend.url, server_name=CERTIFICATE_NAME)
    trusting = ssl.create_default_context(cafile=certificate[0])
    client = client_for(LoadBalancingTransport([backend], verify=trusting))
    assert client.get(f"{VHOST}/x").text == "fine"
    assert tls_backend.sni == [CERTIFICATE_NAME]
    assert host_of(tls_backend.heads[0]) == f"{CERTIFICATE_NAME}:{tls_backend.port}"


def test_the_certificate_is_verified_against_the_server_name(tls_backend,  # noqa: F811
                                                             certificate):
    """The certificate is valid for 127.0.0.1 (the address connected to) but not for the
    server name the backend claims: the attempt fails as a connect failure would."""
    backend = lb.Backend(tls_backend.url, server_name="wrong.example")
    trusting = ssl.create_default_context(cafile=certificate[0])
    transport = LoadBalancingTransport([backend], verify=trusting)
    with pytest.raises(httpx.ConnectError, match="certificate") as info:
        client_for(transport).get(f"{VHOST}/x")
    assert info.value.backends_tried == (tls_backend.url,)
    assert transport.balancer.stats()[0]["failures"] == 1
    assert tls_backend.sni == ["wrong.example"]


def test_a_backend_whose_server_name_changed_gets_new_connections(servers):
    server = servers("a")
    transport = LoadBalancingTransport([lb.Backend(server.url, server_name="old.example")])
    client = client_for(transport)
    assert client.get(f"{VHOST}/x").json()["headers"]["Host"] == f"old.example:{server.port}"
    transport.balancer.update([lb.Backend(server.url, server_name="new.example")])
    assert client.get(f"{VHOST}/x").json()["headers"]["Host"] == f"new.example:{server.port}"
    assert server.connections == 2
    assert wait_for(lambda: open_connections(server) == 1)    # the old name's one closed


def test_inner_transport_builds_each_backends_transport(servers):
    a, b = servers("a"), servers("b")
    built: list[lb.Backend] = []

    def inner(backend: lb.Backend) -> httpx.BaseTransport:
        built.append(backend)
        return httpx.HTTPTransport(retries=0)

    client = client_for(LoadBalancingTransport([a.url, b.url], inner_transport=inner))
    assert [client.get(f"{VHOST}/").json()["server"] for _ in range(4)] == list("abab")
    assert built == [lb.Backend(a.url), lb.Backend(b.url)]          # once per backend
    with pytest.raises(lb.ConfigError, match="verify, limits given with inner_transport="):
        LoadBalancingTransport([a.url], inner_transport=inner, verify=False,
                               limits=httpx.Limits())


def test_the_requests_shorter_timeout_wins_and_the_settings_bound_a_longer_one(servers):
    a = servers("a")
    a.behaviour = "hang"
    transport = LoadBalancingTransport([a.url], read_timeout=0.3, retries=0)
    with pytest.raises(httpx.ReadTimeout):              # 30 s asked: the settings' 0.3 s
        client_for(transport).get(f"{VHOST}/", timeout=30)
    transport = LoadBalancingTransport([a.url], retries=0)
    with pytest.raises(httpx.ReadTimeout):              # the settings' 60 s: the call's 0.2 s
        client_for(transport).get(f"{VHOST}/", timeout=0.2)


def test_a_preserved_host_and_a_host_of_the_requests_own(servers):
    a = servers("a")
    plain = client_for(LoadBalancingTransport([a.url]))
    assert plain.get(f"{VHOST}/", headers={"Host": "own.example"}).json()["headers"]["Host"] \
        == "own.example"
    assert plain.get(f"{VHOST}/").json()["headers"]["Host"] == f"127.0.0.1:{a.port}"


# -- departures and closing -------------------------------------------------------------------

def test_rolling_deploys_leave_no_connection_to_departed_backends(servers):
    old = servers("b0")
    transport = LoadBalancingTransport([old.url])
    client = client_for(transport)
    client.get(f"{VHOST}/x").raise_for_status()
    departed = []
    for i in range(10):                 # each deploy: a new replica, the old one leaves
        new = servers(f"b{i + 1}")
        transport.balancer.update([new.url])
        for _ in range(3):
            assert client.get(f"{VHOST}/x").json()["server"] == new.name
        departed.append(old)
        old = new
    assert all(closed_by_the_client(server) for server in departed)
    assert open_connections(old) == 1                   # the member's connection is kept
    assert len(transport._targets) == 1                 # one inner transport: the member's
    client.close()
    assert closed_by_the_client(old)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_in_flight_on_a_departing_backend_completes(servers, stream):
    old, new = servers("old"), servers("new")
    old.delay = 0.3                     # the answer comes after the departure
    transport = LoadBalancingTransport([old.url])
    client = client_for(transport)
    answers: list[httpx.Response] = []

    def call() -> None:
        if stream:
            with client.stream("GET", f"{VHOST}/slow") as response:
                response.read()
                answers.append(response)
        else:
            answers.append(client.get(f"{VHOST}/slow"))

    request = threading.Thread(target=call)
    request.start()
    assert wait_for(lambda: old.requests == 1)
    transport.balancer.update([new.url])        # old drains: one request in flight
    assert open_connections(old) == 1           # in use: not cut
    request.join(5)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["server"] == "old"
    assert closed_by_the_client(old)            # its connection closed as it ended
    assert transport.balancer.stats()[0]["in_flight"] == 0
    assert client.get(f"{VHOST}/x").json()["server"] == "new"


def test_close_closes_the_connections_and_the_pool_it_built_not_a_shared_one(servers,
                                                                            monkeypatch):
    a = servers("a")
    owned = LoadBalancingTransport([a.url])
    with client_for(owned) as client:           # Client.close() closes its transport
        client.get(f"{VHOST}/").raise_for_status()
        assert open_connections(a) == 1
    assert closed_by_the_client(a)

    pool = lb.Balancer([a.url])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    with client_for(LoadBalancingTransport(balancer=pool)) as client:
        client.get(f"{VHOST}/").raise_for_status()
    assert len(unsubscribed) == 1               # no longer follows the shared pool
    assert client_for(LoadBalancingTransport(balancer=pool)).get(f"{VHOST}/").status_code \
        == 200
    pool.close()


def test_exported_from_the_package_with_httpx_loaded_only_then():
    import subprocess
    import sys

    code = ("import sys, lbmiddleware as lb; assert 'httpx' not in sys.modules; "
            "lb.AsyncLoadBalancingTransport; assert 'httpx' in sys.modules; "
            "assert issubclass(lb.LoadBalancingTransport, __import__('httpx').BaseTransport)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_pool_with_a_source_built_in_a_loop_is_waited_for_by_the_first_request(servers,
                                                                                tmp_path):
    """A transport built inside an async function does not wait there for its etcd source
    (that would stop the loop); used from a worker thread, its first request waits for the
    source's first answer instead of finding the pool empty."""
    import asyncio

    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        a = servers("a")
        etcd.put("services/web/a", a.url)

        async def build_then_call() -> str:
            transport = LoadBalancingTransport([etcd.source("services/web")])
            assert not transport._ready             # the pool did not wait here

            def call() -> str:
                with client_for(transport) as client:
                    return str(client.get(f"{VHOST}/x").json()["server"])

            return await asyncio.to_thread(call)

        assert asyncio.run(build_then_call()) == "a"
    finally:
        etcd.stop()
