"""The adapter closes its connections to backends that leave the balancer (a fleet whose
replicas come and go), without cutting a request in flight on them, against real loopback
backends: each counts the connections it has open (``open_sockets``), so a test sees on
the server's side which ones the client closed."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.core.events import DrainEnded

from ..support.departures import closed_by_the_client, open_connections, record_unsubscribes
from ..support.etcd import EtcdServer
from ..support.waiting import wait_for

VHOST = "http://svc"


def mounted(adapter: LoadBalancingAdapter) -> requests.Session:
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    return session


def test_rolling_deploys_leave_no_connection_to_departed_backends(servers):
    old = servers("b0")
    adapter = LoadBalancingAdapter([old.url])
    session = mounted(adapter)
    session.get(f"{VHOST}/x").raise_for_status()
    departed = []
    for i in range(20):                 # each deploy: a new replica, the old one leaves
        new = servers(f"b{i + 1}")
        adapter.balancer.update([new.url])
        for _ in range(3):
            assert session.get(f"{VHOST}/x").json()["server"] == new.name
        departed.append(old)
        old = new
    assert all(closed_by_the_client(server) for server in departed)
    assert open_connections(old) == 1                   # the member's connection is kept
    assert len(adapter.poolmanager.pools) == 1          # one pool: the member's
    assert adapter.balancer.stats()[0]["in_flight"] == 0
    session.close()


def test_a_drained_backend_loses_its_idle_connections(servers):
    a, b = servers("a"), servers("b")
    adapter = LoadBalancingAdapter([a.url, b.url])
    session = mounted(adapter)
    for _ in range(4):
        session.get(f"{VHOST}/x").raise_for_status()
    assert open_connections(a) == open_connections(b) == 1
    adapter.balancer.drain(a.url)
    assert closed_by_the_client(a)
    assert open_connections(b) == 1
    assert all(session.get(f"{VHOST}/x").json()["server"] == "b" for _ in range(3))


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_in_flight_on_a_departing_backend_completes(servers, stream):
    old, new = servers("old"), servers("new")
    old.delay = 0.3                     # the answer comes after the departure
    adapter = LoadBalancingAdapter([old.url])
    session = mounted(adapter)
    answers: list[requests.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(session.get(f"{VHOST}/slow", stream=stream)))
    request.start()
    assert wait_for(lambda: old.requests == 1)
    adapter.balancer.update([new.url])          # old drains: one request in flight
    request.join(5)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["server"] == "old"
    assert closed_by_the_client(old)            # its connection closed as it came back
    assert adapter.balancer.stats()[0]["in_flight"] == 0
    assert session.get(f"{VHOST}/x").json()["server"] == "new"


def test_a_request_outliving_its_drain_timeout_completes(servers):
    old, new = servers("old"), servers("new")
    old.delay = 0.4
    adapter = LoadBalancingAdapter([old.url], drain_timeout="50ms")
    events: list[object] = []
    adapter.balancer.subscribe(events.append)
    session = mounted(adapter)
    answers: list[requests.Response] = []
    request = threading.Thread(target=lambda: answers.append(session.get(f"{VHOST}/slow")))
    request.start()
    assert wait_for(lambda: old.requests == 1)
    adapter.balancer.update([new.url])
    time.sleep(0.1)
    assert session.get(f"{VHOST}/x").json()["server"] == "new"    # its pick ends the drain
    assert any(isinstance(e, DrainEnded) and e.timed_out for e in events)
    request.join(5)
    assert answers[0].json()["server"] == "old"
    assert closed_by_the_client(old)


def test_a_body_streamed_after_the_departure_is_read_whole(servers):
    old, new = servers("old"), servers("new")
    old.body_size = 200_000
    old.behaviour = "pause_body"        # half the body, then the rest on release()
    adapter = LoadBalancingAdapter([old.url])
    session = mounted(adapter)
    response = session.get(f"{VHOST}/big", stream=True)
    adapter.balancer.update([new.url])
    assert open_connections(old) == 1           # in use: not cut
    old.release.set()
    assert len(response.content) == 200_000
    assert closed_by_the_client(old)


def test_a_backend_that_comes_back_gets_a_fresh_pool(servers):
    a, b = servers("a"), servers("b")
    adapter = LoadBalancingAdapter([a.url])
    session = mounted(adapter)
    session.get(f"{VHOST}/x").raise_for_status()
    first = adapter.poolmanager.connection_from_url(a.url)
    adapter.balancer.update([b.url])
    assert closed_by_the_client(a)
    adapter.balancer.update([a.url])
    assert session.get(f"{VHOST}/x").json()["server"] == "a"
    assert adapter.poolmanager.connection_from_url(a.url) is not first
    assert a.connections == 2 and open_connections(a) == 1


def test_a_pool_shared_with_a_member_is_kept(servers):
    server = servers("a")
    adapter = LoadBalancingAdapter([server.url + "/v1", server.url + "/v2"])
    session = mounted(adapter)
    for _ in range(4):
        session.get(f"{VHOST}/x").raise_for_status()
    adapter.balancer.update([server.url + "/v2"])     # same host:port, still a member
    for _ in range(4):
        assert session.get(f"{VHOST}/x").json()["path"] == "/v2/x"
    assert server.connections == 1


def test_every_adapter_on_a_shared_balancer_closes_its_own(servers, monkeypatch):
    old, new = servers("old"), servers("new")
    pool = lb.Balancer([old.url])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    adapters = [LoadBalancingAdapter(balancer=pool) for _ in range(2)]
    sessions = [mounted(adapter) for adapter in adapters]
    for session in sessions:
        session.get(f"{VHOST}/x").raise_for_status()
    assert open_connections(old) == 2
    pool.update([new.url])
    assert closed_by_the_client(old)
    sessions[0].close()                 # stops following the shared pool, which stays open
    assert len(unsubscribed) == 1
    assert sessions[1].get(f"{VHOST}/x").json()["server"] == "new"
    sessions[1].close()
    assert len(unsubscribed) == 2
    pool.close()


def test_a_dropped_adapter_is_not_kept_by_a_shared_balancer(servers):
    a, b = servers("a"), servers("b")
    pool = lb.Balancer([a.url])
    adapter = LoadBalancingAdapter(balancer=pool)
    mounted(adapter).get(f"{VHOST}/x").raise_for_status()
    ref = weakref.ref(adapter)
    del adapter
    gc.collect()
    assert ref() is None
    pool.update([b.url])                # its listener unsubscribes itself, quietly
    pool.close()


def test_replicas_coming_and_going_in_etcd_leave_no_connection_behind(servers, tmp_path):
    """Through a real source: each deploy registers the new replica in etcd and deletes the
    old one's key; the pool follows in its background thread, which closes the adapter's
    connections to the replica that left."""
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        old = servers("b0")
        etcd.put("services/web/b0", old.url)
        adapter = LoadBalancingAdapter([etcd.source("services/web")])
        session = mounted(adapter)
        assert session.get(f"{VHOST}/x").json()["server"] == "b0"
        departed = []
        for i in range(5):
            new = servers(f"b{i + 1}")
            etcd.put(f"services/web/{new.name}", new.url)
            etcd.delete(f"services/web/{old.name}")
            assert wait_for(lambda url=new.url: adapter.balancer.backends == (lb.Backend(url),))
            assert session.get(f"{VHOST}/x").json()["server"] == new.name
            departed.append(old)
            old = new
        assert all(closed_by_the_client(server) for server in departed)
        assert open_connections(old) == 1 and len(adapter.poolmanager.pools) == 1
        session.close()
    finally:
        etcd.stop()
